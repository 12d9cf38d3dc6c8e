"""Markdown tables of the latest results in bench/results/*.json, printed or filled into BENCHMARKS.md.

python -m bench.report [--results bench/results] [--fill BENCHMARKS.md]

Prints one section per benchmark that has a result file, each with its machine line and a
PRELIMINARY note when the run used the untrained stand-in or had the CPU contended. With --fill,
replaces what stands between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in the given file
with the section for NAME instead (the prose around the tables is left alone).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import common


def _machine(record: dict[str, Any]) -> str:
    m = record["machine"]
    line = f"{m['cores']} cores, {m['cpu_model']}, {m['memory_gib']} GiB"
    if m.get("gpus"):
        line += f", GPU {', '.join(m['gpus'])}"
    others = m.get("competing_processes_during_run") or m.get("competing_processes") or []
    if others:
        line += "; other processes used " + ", ".join(f"{p['name']} {p['cores']} cores" for p in others)
    bundle = record.get("bundle")
    if isinstance(bundle, dict):
        line += f"; model {bundle['version']} ({bundle['input_size']} px)"
    return f"_{record['finished_at']}: {line}._"


def _note(record: dict[str, Any]) -> list[str]:
    if record.get("preliminary"):
        return [f"**PRELIMINARY** ({'; '.join(record['preliminary'])})", ""]
    return []


def throughput(r: dict[str, Any]) -> list[str]:
    out = [f"batch {r['batch_size']}, {r['decode_workers']} decode threads; images/s", "",
           "| input | N | e2e steady | e2e wall (incl. start-up) | (a) model alone | (c) decode alone | limit "
           "| e2e / limit | (b) one at a time | e2e / (b) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for k in r["results"]:
        e = k["e2e"]
        out.append(f"| {k['kind']} | {k['n']} | {e['images_per_s']:.1f} | {e['wall_images_per_s']:.1f} "
                   f"({e['wall_s']:.0f} s) | {k['a_ceiling']['images_per_s']:.1f} "
                   f"| {k['c_decode']['images_per_s']:.1f} "
                   f"| {k['limit_images_per_s']:.1f} {k['limit_rule']} | **{k['e2e_over_limit']:.2f}** "
                   + (f"| {k['b_seed']['images_per_s']:.1f} | **{k['e2e_over_seed']:.1f}** |" if k["b_seed"]
                      else "| not measured | |"))
    db = r.get("db_cost_sqlite")
    if db:
        out += ["", f"(d) database work alone (SQLite): {db['ms_per_batch']:.1f} ms per batch of {db['batch_size']} "
                f"= {db['ms_per_image']:.2f} ms/image."]
    return out


def decode(r: dict[str, Any]) -> list[str]:
    out = [f"one thread, median of {r['n']} files (best of {r['repeats']}), to {r['size']}x{r['size']}", "",
           "| input | method | ms/image | vs reference |", "|---|---|---|---|"]
    for row in r["rows"]:
        out.append(f"| {row['kind']} ({row['file_mb']:.1f} MB) | {row['method']} | {row['ms_per_image']:.1f} "
                   f"| {row['speedup_vs_reference']:.2f}x |")
    return out


def latency(r: dict[str, Any]) -> list[str]:
    out = [f"max_batch_wait {r['max_batch_wait_s']} s, quiet_period {r['quiet_period_s']} s, batch {r['batch_size']}, "
           f"one file every {r['interval_s']} s; target p95 <= {r['target_p95_s']:.1f} s", "",
           "| how the file arrives | files | p50 s | p95 s | max s | p95 / target |", "|---|---|---|---|---|---|"]
    for m in r["results"]:
        out.append(f"| {m['mode']} | {m['files']} | {m['p50_s']:.2f} | {m['p95_s']:.2f} | {m['max_s']:.2f} "
                   f"| **{m['p95_s'] / r['target_p95_s']:.2f}** |")
    return out


def memory(r: dict[str, Any]) -> list[str]:
    out = [f"batch {r['batch_size']}", "",
           "| backlog N | peak RSS MiB | vs smallest N | median RSS 2nd / last quarter MiB | images/s |",
           "|---|---|---|---|---|"]
    for m in r["results"]:
        out.append(f"| {m['n']:,} | {m['peak_rss_mib']:.0f} | **{m['peak_over_smallest']:.2f}x** "
                   f"| {m.get('median_rss_q2_mib') or 0:.0f} / {m.get('median_rss_q4_mib') or 0:.0f} "
                   f"| {m['images_per_s']:.1f} |")
    return out


def database(r: dict[str, Any]) -> list[str]:
    backends = [b["backend"] for b in r["results"]]
    out = [f"{r['rows']:,} images, limit 100, median of {r['repeats']} "
           f"(ms; ratio to the {r['target_ms']:.0f} ms target)", "",
           "| filter | " + " | ".join(backends) + " |", "|---|" + "---|" * len(backends)]
    for i, q in enumerate(r["results"][0]["queries"]):
        cells = []
        for b in r["results"]:
            row = b["queries"][i]
            cells.append(f"{row['median_ms']:.1f} ({row['median_ms'] / r['target_ms']:.2f}x)"
                         + ("" if row["meets_target"] else " MISS"))
        out.append(f"| {q['query']} | " + " | ".join(cells) + " |")
    return out


def distributed(r: dict[str, Any]) -> list[str]:
    out = [f"{r['n']} full-size JPEGs per configuration, batch {r['batch_size']}", "",
           "| worker processes | images/s steady | vs one worker | images/s wall | publish ms/task |",
           "|---|---|---|---|---|"]
    for w in r["results"]:
        out.append(f"| {w['workers']} | {w['images_per_s']:.1f} | **{w['over_one_worker']:.2f}x** "
                   f"| {w['wall_images_per_s']:.1f} | {w['publish_ms_per_task']:.1f} |")
    db = r["database_cost"]
    out += ["", f"Database work per batch of {db['batch_size']} on PostgreSQL (one connection): "
            f"{db['ms_per_batch']:.1f} ms, at most {db['rows_per_s_one_connection']:.0f} rows/s per connection."]
    return out


def profile(r: dict[str, Any]) -> list[str]:
    out = [f"`pneumoscan scan` on {r['n']} {r['kind']} files: the main and the prepare thread by pipeline line "
           "(shares per thread)", "", "| share | seconds | thread, stage |", "|---|---|---|"]
    for row in r["rows"]:
        share = "" if row["share"] is None else f"{row['share']:.0%}"
        out.append(f"| {share} | {row['samples'] / r['rate']:.1f} | `{row['stage']}` |")
    return out


def db_writes(r: dict[str, Any]) -> list[str]:
    out = [f"database work per batch (settled_hashes + save_results), ms; reference: commit {r['reference_commit']} "
           "(one statement per row)", "", "| database | batch | reference ms | now ms | speed-up |",
           "|---|---|---|---|---|"]
    for row in r["results"]:
        out.append(f"| {row['backend']} | {row['batch_size']} | {row['reference_ms_per_batch']:.1f} "
                   f"| {row['current_ms_per_batch']:.1f} | **{row['speedup']:.1f}x** |")
    return out


def compare_commits(r: dict[str, Any]) -> list[str]:
    from bench.compare_commits import table

    current = r["current"]["commit"][:10] + (" + uncommitted src/ changes" if r["current"]["uncommitted_src_changes"]
                                             else "")
    return [f"base {r['base']['commit'][:10]}, current {current}; bundle {r.get('bundle_version', r['bundle'])}; "
            f"{r['rounds']} rounds per side, alternating; {r['minutes']} min in all", "", table(r["rows"], r["rounds"])]


SECTIONS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "db_writes": db_writes, "compare_commits": compare_commits,
    "throughput": throughput, "decode": decode, "latency": latency, "memory": memory, "database": database,
    "distributed": distributed, "profile-jpeg": profile, "profile-dicom": profile,
}


def render(name: str, results: Path) -> list[str] | None:
    path = results / f"{name}.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return [_machine(record), "", *_note(record), *SECTIONS[name](record)]


def fill(document: Path, results: Path) -> None:
    text = document.read_text()
    for name in SECTIONS:
        lines = render(name, results)
        if lines is None:
            continue
        block = re.compile(rf"(<!-- bench:{re.escape(name)} -->\n).*?(<!-- /bench:{re.escape(name)} -->)", re.S)
        body = "\n".join(lines)

        def replace(match: re.Match[str], body: str = body) -> str:
            return f"{match[1]}{body}\n{match[2]}"

        text = block.sub(replace, text)
    document.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--fill", type=Path, help="a markdown file with <!-- bench:NAME --> blocks to fill")
    args = parser.parse_args()
    if args.fill:
        fill(args.fill, args.results)
        return
    for name in SECTIONS:
        lines = render(name, args.results)
        if lines is not None:
            print("\n".join([f"### {name}", "", *lines, ""]))


if __name__ == "__main__":
    main()
