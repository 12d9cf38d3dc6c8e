"""The training recipe: `TrainConfig`, everything that defines a training run, light enough for the CLI to read."""

from __future__ import annotations

from dataclasses import dataclass


class RecipeError(ValueError):
    """A training recipe that cannot run as asked on this data or from this bundle; the message says what to change."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; stored in the model card."""

    architecture: str = "pneumonet"
    input_size: int = 224
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    schedule: str = "cosine"  # cosine | constant | step
    weight_decay: float = 1e-4
    weights: str | None = None  # "imagenet" for backbones, with internet access
    val_fraction: float = 0.15
    min_sensitivity: float = 0.97
    seed: int = 0  # the validation split's seed, and training's unless train_seed is set
    train_seed: int | None = None  # training's randomness alone (head init, shuffling, augmentation, dropout)
    augment: bool = True
    mixup: float = 0.0  # Beta(alpha, alpha) mixing of image pairs within a batch; 0 turns it off
    label_smoothing: float = 0.0
    version: str | None = None
    init: str | None = None  # a bundle directory whose weights training starts from (fine-tuning)
    # Fine-tuning a pretrained backbone: the head trains alone for head_epochs, then the backbone joins
    # (warmed up over one epoch) at backbone_lr_scale times the head's rate.
    head_epochs: int = 0
    backbone_lr_scale: float = 1.0
    freeze_bn: bool = False  # keep the backbone's BatchNorm statistics and affine weights as pretrained
    ema: float = 0.0  # momentum of an exponential moving average of the weights, used for validation and the bundle
    equalize: bool = False  # per-image histogram equalization as the model's first layer (layers.Equalize)
    stretch: float = 0.0  # augmentation: the image's height scaled by up to +/- this share, its width kept
    resample: float = 0.0  # augmentation: half the batches shrunk by a factor down to 1 - this, then enlarged back

    @property
    def rng_seed(self) -> int:
        """The seed of training's randomness: runs that differ only in it share their validation split."""
        return self.seed if self.train_seed is None else self.train_seed
