#!/usr/bin/env bash
# pneumonet-v7's candidate (docs/model-eval/selection-rule-v7.md): v6's recipe plus per-image histogram equalization.
set -euo pipefail
DATA=${1:?usage: reproduce-v7.sh DATA_DIR}
OUT=${OUT:-runs}
# 1. Train (temperature and threshold are fitted on validation by train itself).
pneumoscan -v train "$DATA" --out "$OUT/lite1-224-eq" --architecture efficientnet-lite1 --weights imagenet \
  --input-size 224 --epochs 10 --head-epochs 1 --backbone-lr-scale 0.1 --learning-rate 1e-3 --freeze-bn \
  --ema 0.995 --equalize --version lite1-224-eq-v1
# 2. Eligibility: speed against MobileNetV2, side by side, and file size.
python bench/model_speed.py --bundle "$OUT/lite1-224-eq"
# 3. Test figures, once, after the choice.
pneumoscan evaluate "$OUT/lite1-224-eq" "$DATA" --out "$OUT/lite1-224-eq/eval-test"
