"""The README's set-up: what `make` installs with which installer (read with ``make -n``, nothing is installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def planned(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The commands ``make`` would run to build a fresh venv under ``tmp_path`` for the tests."""
    make = shutil.which("make")
    assert make, "make is not installed"
    venv = tmp_path / "venv"
    return subprocess.run(
        [make, "-n", "-B", "--no-print-directory", "-C", str(ROOT), f"VENV={venv}", f"{venv}/.test", *args],
        capture_output=True,
        text=True,
    )


def test_torch_goes_in_with_pip_then_the_extras_with_the_pinned_uv(tmp_path: Path) -> None:
    result = planned(tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    torch = next(i for i, line in enumerate(lines) if "pip install" in line and "torch==2.13.0" in line)
    extras = next(i for i, line in enumerate(lines) if "-e '.[" in line)
    assert torch < extras
    assert "-c constraints.txt uv &&" in lines[extras] and "uv pip install" in lines[extras]
    assert "--compile-bytecode" in lines[extras] and "-c constraints.txt -e" in lines[extras]
    assert "uv==" in (ROOT / "constraints.txt").read_text()


def test_installer_pip_installs_everything_with_pip(tmp_path: Path) -> None:
    result = planned(tmp_path, "INSTALLER=pip")
    assert result.returncode == 0, result.stderr
    assert "uv" not in result.stdout.replace(str(tmp_path), "").split()
    assert "uv pip install" not in result.stdout and "-c constraints.txt uv" not in result.stdout
    assert any("-m pip install" in line and "-e '.[" in line for line in result.stdout.splitlines())


@pytest.mark.parametrize("installer", ["conda", "UV", ""])
def test_an_unknown_installer_is_refused_before_anything_runs(tmp_path: Path, installer: str) -> None:
    result = planned(tmp_path, f"INSTALLER={installer}")
    assert result.returncode != 0 and not result.stdout
    assert f"INSTALLER is '{installer}'; use uv or pip" in result.stderr
