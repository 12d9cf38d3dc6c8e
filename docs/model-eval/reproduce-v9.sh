#!/usr/bin/env bash
# pneumonet-v9's candidate (docs/model-eval/selection-rule-v9.md): v4's recipe with aspect-ratio jitter,
# two training seeds, and their weight soup.
set -euo pipefail
DATA=${1:?usage: reproduce-v9.sh DATA_DIR}
OUT=${OUT:-runs}
# 1. J0 and J1: v4's recipe plus --stretch 0.25 (the validation split stays seed 0's).
for s in 0 1; do
  pneumoscan -v train "$DATA" --out "$OUT/lite0-224-stretch-s$s" --architecture efficientnet-lite0 \
    --weights imagenet --input-size 224 --epochs 10 --head-epochs 1 --backbone-lr-scale 0.1 \
    --learning-rate 1e-3 --freeze-bn --ema 0.995 --stretch 0.25 --train-seed "$s" \
    --version "lite0-224-stretch-s$s"
done
# 2. The soup: mean weights, then temperature and threshold on validation.
pneumoscan soup "$OUT/lite0-224-stretch-s0" "$OUT/lite0-224-stretch-s1" --data "$DATA" --out "$OUT/stretch-soup" \
  --version lite0-224-stretch
# 3. Eligibility: speed against MobileNetV2, side by side, and file size.
python bench/model_speed.py --bundle "$OUT/stretch-soup"
# 4. Test figures, once each, after the choice.
for b in "$OUT/stretch-soup" "$OUT/lite0-224-stretch-s0" "$OUT/lite0-224-stretch-s1"; do
  pneumoscan evaluate "$b" "$DATA" --out "$b/eval-test"
done
