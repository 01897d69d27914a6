"""`maws-scale data ...` never imports torch (it cost 1.4 s of every build command)."""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

SCRIPT = """
import sys
from maws_scale.cli import main

root, out = sys.argv[1], sys.argv[2]
steps = [
    ["data", "build", "--source", "folder", "--input", root, "--output", out + "/whole", "--quiet"],
    ["data", "build", "--source", "folder", "--input", root, "--output", out + "/parts", "--partitions", "2",
     "--partition", "0", "--quiet"],
    ["data", "build", "--source", "folder", "--input", root, "--output", out + "/parts", "--partitions", "2",
     "--partition", "1", "--quiet"],
    ["data", "merge", out + "/parts"],
    ["data", "vocab", out + "/parts", "--min-count", "1", "--workers", "2"],
    ["data", "verify", out + "/parts", "--json"],
]
codes = [main(step) for step in steps]
print({"codes": codes, "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))})
"""


def test_data_commands_do_not_import_torch(tmp_path: Path):
    for name in ("a", "b"):
        (tmp_path / "in" / name).mkdir(parents=True)
        for i in range(3):
            buffer = io.BytesIO()
            Image.new("RGB", (9, 7), (40 * i, 90, 10)).save(buffer, "PNG")
            (tmp_path / "in" / name / f"{i}.png").write_bytes(buffer.getvalue())
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "in"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    result = ast.literal_eval(run.stdout.strip().splitlines()[-1])  # the dict printed last
    assert result == {"codes": [0, 0, 0, 0, 0, 0], "torch": []}, run.stderr
    assert json.loads((tmp_path / "out" / "parts" / "vocab.json").read_text())["records"] == 6
