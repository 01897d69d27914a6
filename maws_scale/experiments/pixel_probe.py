"""The probes' own floor: linear probe, kNN and few-shot on raw pixels (no encoder), with a run config's evaluation.

    python -m maws_scale.experiments.pixel_probe configs/demo.yaml [KEY=VALUE ...] [--json PATH]

The images go through the config's eval loader (``model.img_size``, normalisation) and are flattened; everything
else (probe-train cap, weight-decay grid, shots, seeds) is ``maws_scale.eval.evaluate_encoder``. What a frozen
encoder's probe accuracy means depends on it: a probe that raw pixels beat does not rank representations alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from maws_scale.config import ConfigError, load_config


class PixelEncoder(torch.nn.Module):
    """Flattened normalised pixels as the "features" (an encoder's ``forward_features`` + ``pool`` interface)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)  # gives the loader a device

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        return features


def pixel_metrics(config: str | None, overrides: list[str]) -> dict[str, float]:
    """The evaluation metrics of raw pixels under ``config``'s evaluation settings."""
    from maws_scale.eval.evaluate import evaluate_encoder

    cfg = load_config(config, overrides)
    return evaluate_encoder(PixelEncoder(), cfg) or {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="run config whose evaluation is used, e.g. configs/demo.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
    parser.add_argument("--json", help="also write the metrics here")
    args = parser.parse_args(argv)
    try:
        metrics = pixel_metrics(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(metrics, indent=1, sort_keys=True) + "\n"
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
