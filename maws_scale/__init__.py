"""maws-scale: billion-scale ViT training with the MAWS recipe (MAE pre-pretraining → weakly-supervised pretraining)."""

from pathlib import Path

__version__ = "0.1.0"


def _checkout_subpackages() -> None:
    """From a plain checkout on ``sys.path`` (no install, e.g. the GPU check on a machine without our venv), let
    ``maws_scale.kernels`` and ``maws_scale.ds_configs`` resolve to the top-level ``kernels/`` and ``ds_configs/``
    folders, as setup.py's ``package_dir`` does for an install. Only a checkout's root (with setup.py beside them)
    is added, and only when the installed layout is not already here."""
    package = Path(__file__).resolve().parent
    root = package.parent
    if (package / "kernels").is_dir() or not (root / "setup.py").is_file():
        return
    if (root / "kernels" / "__init__.py").is_file() and str(root) not in __path__:
        __path__.append(str(root))


_checkout_subpackages()
