"""Models stage: network architectures, training, evaluation and model bundles (never imports db or Celery)."""

# Kept here, free of Keras, so the CLI can list them without importing TensorFlow.
BACKBONES = ("mobilenetv2", "efficientnetb0", "densenet121", "xception", "vgg16", "resnet50")
ARCHITECTURES = ("pneumonet", "tiny", *BACKBONES)
