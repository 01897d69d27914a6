"""Install maws-scale. Install torch==2.13.0 (or your cluster's torch) first; see the README."""

from pathlib import Path

from setuptools import find_packages, setup

EXTRAS = {
    "track": ["mlflow==3.17.2", "matplotlib>=3.8", "scipy>=1.10"],
    "tp": [
        "megatron-core>=0.16.1,<0.17; python_version < '3.12'",
        "megatron-core>=0.16.1,<0.20; python_version >= '3.12'",
    ],
    "xformers": ["xformers>=0.0.30"],
    "data": ["pillow>=10", "webdataset>=0.2.100", "tokenizers>=0.20"],
    "jobs": ["submitit>=1.5"],
    "bench": ["scikit-image>=0.22", "scikit-learn>=1.4"],
    "triton": ["triton>=3.4,<4"],  # kernels/ read triton.knobs (new in 3.4)
    # parallel.fp8: torchao float8 (pure-Python wheel; 0.18 runs on torch 2.13, incl. emulation on CPU)
    "fp8": ["torchao>=0.18,<0.19"],
}
EXTRAS["dev"] = [
    "pytest>=8",
    "pytest-xdist>=3.5",
    "pytest-timeout>=2.3",
    "ruff>=0.6",
    "hypothesis>=6.100",
    "triton>=3.4,<4",
    "torchao>=0.18,<0.19",
]
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})
# data.decode=gpu: torchvision.io.decode_jpeg on CUDA. Not in "all": torchvision must be the build made for the
# installed torch (install it with the cluster's torch; the lent GPU image has it)
EXTRAS["gpu-decode"] = ["torchvision>=0.19"]

setup(
    name="maws-scale",
    version="0.1.0",
    description="Billion-scale ViT training with the MAWS recipe: MAE pre-pretraining, then weakly-supervised "
    "pretraining, on DeepSpeed ZeRO and megatron-core tensor parallelism",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # The top-level kernels/ and ds_configs/ folders ship inside the package as maws_scale.kernels and
    # maws_scale.ds_configs, so `from maws_scale.kernels import ...` works from an install as from a checkout.
    packages=[*find_packages(include=["maws_scale", "maws_scale.*"]), "maws_scale.kernels", "maws_scale.ds_configs"],
    package_dir={"maws_scale.kernels": "kernels", "maws_scale.ds_configs": "ds_configs"},
    package_data={"maws_scale": ["py.typed"], "maws_scale.ds_configs": ["*.json"]},
    install_requires=[
        # the range tested: 2.11 (the lent GPU machine's, 2.11.0+cu130: the single-process suite, every failure there
        # explained in benchmarks/RESULTS.md) and 2.13 (CI, constraints.txt); nothing older
        "torch>=2.11,<2.14",
        "deepspeed>=0.16,<0.20",
        "pyarrow>=15",
        "pyyaml>=6",
        "pydantic>=2.5,<3",
        "rich>=13",
        "numpy>=1.24",
        "safetensors>=0.4",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["maws-scale=maws_scale.cli:main"]},
)
