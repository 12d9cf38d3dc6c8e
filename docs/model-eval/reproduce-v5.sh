#!/usr/bin/env bash
# pneumonet-v5's candidate (docs/model-eval/selection-rule-v5.md): v4's recipe with mixup and label
# smoothing. About 45 minutes on 2 idle CPU cores (it was run at nice 19 beside other work).
set -euo pipefail
DATA=${1:?usage: reproduce-v5.sh DATA_DIR}
OUT=${OUT:-runs}
# 1. Train (temperature and threshold are fitted on validation by train itself).
pneumoscan -v train "$DATA" --out "$OUT/lite0-224-robust" --architecture efficientnet-lite0 --weights imagenet \
  --input-size 224 --epochs 10 --head-epochs 1 --backbone-lr-scale 0.1 --learning-rate 1e-3 --freeze-bn \
  --ema 0.995 --mixup 0.2 --label-smoothing 0.1 --version lite0-224-robust-v1
# 2. Eligibility: speed against MobileNetV2, side by side, and file size.
python bench/model_speed.py --bundle "$OUT/lite0-224-robust"
# 3. Test figures, once, after the choice.
pneumoscan evaluate "$OUT/lite0-224-robust" "$DATA" --out "$OUT/lite0-224-robust/eval-test"
