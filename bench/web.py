"""The review web app at 1,000,000 images: worklist page and /api/results server time, and image rendering.

python -m bench.web [--rows 1000000] [--backends sqlite,postgresql] [--repeats 15]

Part 1, queries. The database is bench/database.py's synthetic one (its loaders, its spread of
statuses, labels and probabilities), plus one sighting per image and a review of 1% of the
predicted images (a third of them disagreeing with the model). The app runs in process
(pneumoscan.web.app.create_app) and is called through Starlette's test client, signed in with a
session cookie, so each time covers routing, sessions, the query, templates and the transport:
an upper bound on the server time. The reference is the same query through the library alone
(pneumoscan.db.results.query_results, what `pneumoscan results` runs), measured in the same run.
Target: every page and API call under 200 ms.

Part 2, rendering. A 2000x1700 16-bit DICOM (made from a real chest X-ray) is stored by the real
pipeline, then the image and heatmap routes are timed cold (empty render cache; the model already
loaded, as it is after the first heatmap) and cached. Reference: decoding the same file to the
model's input size (pneumoscan.imaging.decode, what a worker does). Targets: under 1 s cold,
under 100 ms cached.
"""

from __future__ import annotations

import argparse
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import common, database

TARGET_MS, RENDER_COLD_MS, RENDER_CACHED_MS = 200.0, 1000.0, 100.0
PASSWORD = "bench-password-123"


def add_reviews_and_sightings(url: str) -> None:
    """One sighting per image at its path; a review of every 100th predicted image, every 3rd of them disagreeing."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO sightings (image_id, path, first_seen_at, last_seen_at, byte_size) "
            "SELECT id, path, first_seen_at, updated_at, byte_size FROM images"))
        connection.execute(text(
            "INSERT INTO reviews (image_id, reviewer, label, comment, created_at) "
            "SELECT image_id, 'bench', CASE WHEN (id / 100) % 3 = 0 THEN "
            "  CASE WHEN label = 'NORMAL' THEN 'PNEUMONIA' ELSE 'NORMAL' END ELSE label END, NULL, created_at "
            "FROM predictions WHERE model_version = :v AND id % 100 = 0"), {"v": database.CURRENT})
        if connection.dialect.name == "postgresql":
            connection.execute(text("ANALYZE"))
    engine.dispose()


def requests_to_time() -> list[tuple[str, str, Any]]:
    """(name, URL, the ResultFilter the library is asked for the same rows)."""
    from pneumoscan.db.results import ResultFilter
    from pneumoscan.domain import Label, Status

    v = database.CURRENT
    m = f"model_version={v}"
    worklist = {"model_version": v, "review": "unreviewed", "sort": "probability", "limit": 50}
    return [
        ("worklist page 1 (unreviewed, most suspicious first)", f"/worklist?{m}", ResultFilter(**worklist)),
        ("worklist page 21 (offset 1000)", f"/worklist?{m}&offset=1000", ResultFilter(**worklist, offset=1000)),
        ("worklist PNEUMONIA", f"/worklist?{m}&label=PNEUMONIA", ResultFilter(**worklist, label=Label.PNEUMONIA)),
        ("worklist disagreements", f"/worklist?{m}&review=disagreement",
         ResultFilter(**{**worklist, "review": "disagreement"})),
        ("worklist reviewed", f"/worklist?{m}&review=reviewed", ResultFilter(**{**worklist, "review": "reviewed"})),
        ("worklist p >= 0.9, newest", f"/worklist?{m}&min_probability=0.9&sort=newest",
         ResultFilter(**{**worklist, "sort": "newest"}, min_probability=0.9)),
        ("api default (newest 100)", f"/api/results?{m}", ResultFilter(model_version=v)),
        ("api PNEUMONIA p >= 0.9", f"/api/results?{m}&label=PNEUMONIA&min_probability=0.9",
         ResultFilter(model_version=v, label=Label.PNEUMONIA, min_probability=0.9)),
        ("api unreviewed by probability", f"/api/results?{m}&review=unreviewed&sort=probability",
         ResultFilter(model_version=v, review="unreviewed", sort="probability")),
        ("api status failed", f"/api/results?{m}&status=failed", ResultFilter(model_version=v, status=Status.FAILED)),
        ("api path glob", f"/api/results?{m}&path=/inbox/0500/*", ResultFilter(model_version=v, path="/inbox/0500/*")),
        ("api offset 5000", f"/api/results?{m}&offset=5000", ResultFilter(model_version=v, offset=5000)),
    ]


def _client(app: Any) -> Any:
    import re

    from fastapi.testclient import TestClient

    client = TestClient(app)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)  # type: ignore[union-attr]
    response = client.post("/login", data={"csrf_token": token, "name": "bench", "password": PASSWORD},
                           follow_redirects=False)
    assert response.status_code == 303, response.text
    return client


def _settings(url: str, data_dir: Path, bundle: Path) -> Any:
    from pneumoscan.config import Settings

    return Settings(data_dir=data_dir, database_url=url, model=bundle, patient_salt="bench", secret_key="bench")


def time_requests(url: str, data_dir: Path, bundle: Path, repeats: int) -> list[dict[str, Any]]:
    from pneumoscan.db import open_database
    from pneumoscan.db.results import count_results, query_results
    from pneumoscan.db.users import add_user
    from pneumoscan.domain import Role
    from pneumoscan.web.app import create_app

    db = open_database(url)
    with db.begin() as session:
        add_user(session, "bench", Role.REVIEWER, PASSWORD)
    settings = _settings(url, data_dir, bundle)
    client = _client(create_app(settings.model_copy(update={"model": bundle}), db))
    rows = []
    try:
        for name, path, filters in requests_to_time():
            def library(f: Any = filters) -> int:
                with db() as session:  # the rows and their total, as the page needs them
                    rows = query_results(session, f)
                    count_results(session, f)
                    return len(rows)

            def web(p: str = path) -> int:
                response = client.get(p)
                assert response.status_code == 200, (p, response.text[:300])
                return len(response.content)

            count = library()
            web()
            web_ms, library_ms = [], []
            for _ in range(repeats):  # interleaved, so that both see the same machine
                start = time.perf_counter()
                web()
                web_ms.append((time.perf_counter() - start) * 1000)
                start = time.perf_counter()
                library()
                library_ms.append((time.perf_counter() - start) * 1000)
            web_median, library_median = common.median(web_ms), common.median(library_ms)
            rows.append({"request": name, "url": path, "rows": count, "median_ms": web_median,
                         "p95_ms": common.percentile(web_ms, 95), "library_median_ms": library_median,
                         "vs_library": common.ratio(web_median, library_median),
                         "meets_target": web_median < TARGET_MS})
            print(f"  {name:55s} {web_median:7.1f} ms (library {library_median:6.1f} ms, {count} rows)", flush=True)
    finally:
        db.dispose()
    return rows


def bench_queries(backend: str, args: argparse.Namespace, now: datetime, bundle: Path) -> dict[str, Any]:
    from pneumoscan.db import open_database

    data_dir = args.work / f"web-{backend}"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    if backend == "sqlite":
        path = data_dir / "results.db"
        url = f"sqlite:///{path}"
        open_database(url).dispose()
        with common.Timer() as load:
            database.load_sqlite(path, args.rows, now)
            add_reviews_and_sightings(url)
        return {"backend": backend, "load_s": load.seconds, "requests": time_requests(url, data_dir, bundle,
                                                                                       args.repeats)}
    with common.scratch_postgres(args.pg_admin) as scratch:
        open_database(scratch.db_url).dispose()
        with common.Timer() as load:
            database.load_postgresql(scratch.pg_url, args.rows, now)
            add_reviews_and_sightings(scratch.db_url)
        return {"backend": backend, "load_s": load.seconds,
                "requests": time_requests(scratch.db_url, data_dir, bundle, args.repeats)}


def bench_rendering(args: argparse.Namespace, bundle: Path) -> dict[str, Any]:
    """Image and heatmap of a 2000x1700 DICOM: cold (cache emptied each time) and cached."""
    import numpy as np
    from PIL import Image as PILImage

    from pneumoscan.db import open_database
    from pneumoscan.db.users import add_user
    from pneumoscan.domain import Outcome, Role
    from pneumoscan.imaging import decode
    from pneumoscan.models.bundle import load_bundle
    from pneumoscan.pipeline import classify_paths
    from pneumoscan.web.app import create_app
    from tests.support import dicoms, xrays

    work = args.work / "web-render"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    source = work / "large.png"
    big = np.asarray(PILImage.open(xrays.PNEUMONIA_IMAGES[0]).convert("L").resize((2000, 1700),
                                                                                   PILImage.Resampling.BICUBIC))
    PILImage.fromarray(big).save(source)
    dicom = dicoms.write_dicom(source, work / "large.dcm")
    url = f"sqlite:///{work / 'db.sqlite'}"
    settings = _settings(url, work / "data", bundle)
    db = open_database(url)
    with db.begin() as session:
        add_user(session, "bench", Role.REVIEWER, PASSWORD)
    model = load_bundle(bundle)
    (stored,) = classify_paths([str(dicom)], bundle=model, sessions=db, settings=settings)
    assert stored.status == Outcome.DONE, stored.reason
    app = create_app(settings, db)
    client = _client(app)
    image_id = client.get("/api/results").json()["results"][0]["id"]
    cache = settings.data_dir / "cache" / "render"
    client.get(f"/api/images/{image_id}/heatmap.png")  # loads TensorFlow and the model once
    data = dicom.read_bytes()
    out: dict[str, Any] = {"file": "2000x1700 16-bit DICOM (explicit VR little endian)", "bytes": len(data),
                           "model": model.version}
    size = (model.input_size, model.input_size)
    reference = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        decode(data, size, settings.decode_policy)
        reference.append((time.perf_counter() - start) * 1000)
    out["reference_decode_to_model_input_ms"] = common.median(reference)
    for kind in ("image", "heatmap"):
        cold, cached = [], []
        for _ in range(args.repeats):
            shutil.rmtree(cache, ignore_errors=True)
            start = time.perf_counter()
            assert client.get(f"/api/images/{image_id}/{kind}.png").status_code == 200
            cold.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            assert client.get(f"/api/images/{image_id}/{kind}.png").status_code == 200
            cached.append((time.perf_counter() - start) * 1000)
        out[kind] = {"cold_median_ms": common.median(cold), "cold_p95_ms": common.percentile(cold, 95),
                     "cached_median_ms": common.median(cached), "cached_p95_ms": common.percentile(cached, 95),
                     "cold_vs_reference_decode": common.ratio(common.median(cold),
                                                              out["reference_decode_to_model_input_ms"]),
                     "meets_target": common.median(cold) < RENDER_COLD_MS and common.median(cached) < RENDER_CACHED_MS}
        print(f"  {kind}: cold {out[kind]['cold_median_ms']:.0f} ms, cached {out[kind]['cached_median_ms']:.1f} ms "
              f"(decode to model input {out['reference_decode_to_model_input_ms']:.0f} ms)", flush=True)
    db.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_database_args(parser)
    parser.add_argument("--skip-render", action="store_true")
    common.add_bundle_args(parser)
    common.add_output_arg(parser, "web")
    args = parser.parse_args()
    info = common.machine()
    print(common.describe_machine(info))
    bundle, bundle_info = common.resolve_bundle(args, args.work)
    now = datetime.now(UTC)
    payload: dict[str, Any] = {"machine": info, "bundle": bundle_info, "rows": args.rows, "targets_ms": {
        "query": TARGET_MS, "render_cold": RENDER_COLD_MS, "render_cached": RENDER_CACHED_MS}, "backends": []}
    for backend in args.backends.split(","):
        print(f"{backend}: loading {args.rows:,} images", flush=True)
        payload["backends"].append(bench_queries(backend, args, now, bundle))
    if not args.skip_render:
        print("rendering", flush=True)
        payload["rendering"] = bench_rendering(args, bundle)
    payload["machine"]["competing_processes_during_run"] = common.competing_load_during_run()
    print(f"wrote {common.write_result('web', payload, args.out)}")


if __name__ == "__main__":
    main()
