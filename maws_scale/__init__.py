"""maws-scale: billion-scale ViT training with the MAWS recipe (MAE pre-pretraining → weakly-supervised pretraining)."""

__version__ = "0.1.0"
