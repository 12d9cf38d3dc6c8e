#!/usr/bin/env bash
# pneumonet-v10's candidate (docs/model-eval/selection-rule-v10.md): v9's ingredients and two more with
# resolution jitter, in one weight soup. Run docs/model-eval/reproduce-v9.sh first (same OUT).
set -euo pipefail
DATA=${1:?usage: reproduce-v10.sh DATA_DIR}
OUT=${OUT:-runs}
# 1. K0 and K1: v9's recipe plus --resample 0.5 (the validation split stays seed 0's).
for s in 0 1; do
  pneumoscan -v train "$DATA" --out "$OUT/lite0-224-resample-s$s" --architecture efficientnet-lite0 \
    --weights imagenet --input-size 224 --epochs 10 --head-epochs 1 --backbone-lr-scale 0.1 \
    --learning-rate 1e-3 --freeze-bn --ema 0.995 --stretch 0.25 --resample 0.5 --train-seed "$s" \
    --version "lite0-224-resample-s$s"
done
# 2. The soup of the four: mean weights, then temperature and threshold on validation.
pneumoscan soup "$OUT/lite0-224-stretch-s0" "$OUT/lite0-224-stretch-s1" "$OUT/lite0-224-resample-s0" \
  "$OUT/lite0-224-resample-s1" --data "$DATA" --out "$OUT/diverse-soup" --version lite0-224-diverse-soup
# 3. Eligibility: speed against MobileNetV2, side by side, and file size.
python bench/model_speed.py --bundle "$OUT/diverse-soup"
# 4. Test figures, once each, after the choice.
for b in "$OUT/diverse-soup" "$OUT/lite0-224-resample-s0" "$OUT/lite0-224-resample-s1"; do
  pneumoscan evaluate "$b" "$DATA" --out "$b/eval-test"
done
