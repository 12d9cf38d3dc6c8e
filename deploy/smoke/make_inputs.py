"""The smoke test's inputs, made inside the pneumoscan image from the committed fixture X-rays (tests/support).

    python make_inputs.py OUT PREFIX COUNT START   distinct PNGs OUT/PREFIX-NNNN.png
    python make_inputs.py OUT study COUNT          one DX chest study of COUNT instances, OUT/study-N.dcm
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.support import dicoms, xrays

out, what, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
if what == "study":
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    for i in range(count):
        dicoms.write_dicom(xrays.ALL_IMAGES[i % len(xrays.ALL_IMAGES)], out / f"study-{i}.dcm",
                           StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=i + 1)
    print(study)
else:
    xrays.distinct_pngs(out, count, prefix=what, start=int(sys.argv[4]))
