"""OpenJPH's ``ojph_compress`` as the HTJ2K encoder of the tests and the benchmarks (no Python package encodes it).

Debian's openjph-tools has it; `bash .ci/run` installs it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

MISSING = "ojph_compress is not installed (Debian package openjph-tools); `bash .ci/run` installs it"


def installed() -> bool:
    return shutil.which("ojph_compress") is not None


def encode_htj2k(values: np.ndarray, bits: int, signed: bool) -> bytes:
    """A lossless HTJ2K codestream of one frame of stored values of ``bits`` bits."""
    samples = values.astype(("<i" if signed else "<u") + ("1" if bits <= 8 else "2"))
    with tempfile.TemporaryDirectory() as folder:
        raw, out = Path(folder, "in.yuv"), Path(folder, "out.j2c")
        raw.write_bytes(samples.tobytes())
        height, width = values.shape
        subprocess.run(["ojph_compress", "-i", str(raw), "-o", str(out), "-reversible", "true",
                        "-dims", f"{{{width},{height}}}", "-num_comps", "1", "-signed", str(signed).lower(),
                        "-bit_depth", str(bits), "-downsamp", "{1,1}"], check=True, capture_output=True)
        return out.read_bytes()
