#!/usr/bin/env bash
# pneumonet-v11's candidate (docs/model-eval/selection-rule-v11.md): a replication of v9's recipe (v4's recipe
# with aspect-ratio jitter) from three fresh training seeds, and their weight soup.
set -euo pipefail
DATA=${1:?usage: reproduce-v11.sh DATA_DIR}
OUT=${OUT:-runs}
# 1. R2, R3 and R4: v9's recipe, new training seeds (the validation split stays seed 0's).
for s in 2 3 4; do
  pneumoscan -v train "$DATA" --out "$OUT/lite0-224-stretch-s$s" --architecture efficientnet-lite0 \
    --weights imagenet --input-size 224 --epochs 10 --head-epochs 1 --backbone-lr-scale 0.1 \
    --learning-rate 1e-3 --freeze-bn --ema 0.995 --stretch 0.25 --train-seed "$s" \
    --version "lite0-224-stretch-s$s"
done
# 2. The soup: mean weights, then temperature and threshold on validation.
pneumoscan soup "$OUT/lite0-224-stretch-s2" "$OUT/lite0-224-stretch-s3" "$OUT/lite0-224-stretch-s4" \
  --data "$DATA" --out "$OUT/stretch-replica" --version lite0-224-stretch-replica
# 3. Eligibility: speed against MobileNetV2, side by side, and file size.
python bench/model_speed.py --bundle "$OUT/stretch-replica"
# 4. Test figures, once each, after the choice.
for b in "$OUT/stretch-replica" "$OUT/lite0-224-stretch-s2" "$OUT/lite0-224-stretch-s3" "$OUT/lite0-224-stretch-s4"; do
  pneumoscan evaluate "$b" "$DATA" --out "$b/eval-test"
done
