"""Models stage: network architectures, training, evaluation and model bundles (never imports db or Celery)."""

# Kept here, free of Keras, so the CLI can list them without importing TensorFlow.
BACKBONES = ("mobilenetv2", "efficientnetb0", "densenet121", "xception", "vgg16", "resnet50")
# ImageNet weights for these come from pip packages (the `train` extra), not from a download.
LITE_BACKBONES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
ARCHITECTURES = ("pneumonet", "tiny", *LITE_BACKBONES, *BACKBONES)
# The smallest input each architecture accepts, for the CLI's help and its checks.
MIN_INPUT_SIZE = {"pneumonet": 32, "tiny": 16, **dict.fromkeys(LITE_BACKBONES, 32), "mobilenetv2": 32,
                  "efficientnetb0": 32, "densenet121": 32, "xception": 71, "vgg16": 32, "resnet50": 32}
