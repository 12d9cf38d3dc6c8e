"""Print the project's run-time requirements from pyproject.toml, one a line (the Dockerfile's dependency layer).

    python requirements.py pyproject.toml [EXTRA ...]

An extra that brings its own TensorFlow (gpu) replaces the CPU build instead of installing beside it.
"""

from __future__ import annotations

import sys
import tomllib


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    with open(pyproject, "rb") as file:
        project = tomllib.load(file)["project"]
    extra = [req for name in extras for req in project["optional-dependencies"][name]]
    base = project["dependencies"]
    if any(req.startswith("tensorflow[") for req in extra):
        base = [req for req in base if not req.startswith(("tensorflow-cpu", "tensorflow>", "tensorflow "))]
    return [*base, *extra]


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1], [e for e in sys.argv[2:] if e])))
