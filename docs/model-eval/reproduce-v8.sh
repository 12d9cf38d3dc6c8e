#!/usr/bin/env bash
# pneumonet-v8's candidate (docs/model-eval/selection-rule-v8.md): a uniform soup of v4-recipe fine-tunes.
set -euo pipefail
DATA=${1:?usage: reproduce-v8.sh DATA_DIR}
OUT=${OUT:-runs}
# 0. I0 is pneumonet-v4 as shipped.
mkdir -p "$OUT/v4"
for f in model.keras card.json; do git show "758d8b0:src/pneumoscan/models/default/$f" > "$OUT/v4/$f"; done
# 1. I1 and I2: v4's recipe with another training seed (the validation split stays seed 0's).
for s in 1 2; do
  pneumoscan -v train "$DATA" --out "$OUT/lite0-224-s$s" --architecture efficientnet-lite0 --weights imagenet \
    --input-size 224 --epochs 10 --head-epochs 1 --backbone-lr-scale 0.1 --learning-rate 1e-3 --freeze-bn \
    --ema 0.995 --train-seed "$s" --version "lite0-224-s$s"
done
# 2. The soup: mean weights, then temperature and threshold on validation. (The order does not change the
#    mean; the card's wording of the preprocessing comes from the first, and v4's predates its correction.)
pneumoscan soup "$OUT/lite0-224-s1" "$OUT/lite0-224-s2" "$OUT/v4" --data "$DATA" --out "$OUT/soup" \
  --version lite0-224-soup
# 3. Eligibility: speed against MobileNetV2, side by side, and file size.
python bench/model_speed.py --bundle "$OUT/soup"
# 4. Test figures, once each, after the choice.
for b in "$OUT/soup" "$OUT/lite0-224-s1" "$OUT/lite0-224-s2"; do
  pneumoscan evaluate "$b" "$DATA" --out "$b/eval-test"
done
