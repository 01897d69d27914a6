"""Every command in the ```bash fences of README.md and docs/*.md runs as written (issue 25).

The convention (also in README "Tests"): a command in a ```bash fence runs on a fresh CPU clone once the demo's
data exists. A line ending with ``# cluster`` is run with ``--dry-run``; a line ending with ``# gpu`` (needs a GPU
or a launcher's hosts) or ``# long`` (hours of CPU: a reproduction recipe) is only parsed: its executable must exist
and a ``maws-scale`` command line must parse. A fence whose first line is ``# long`` is parsed as a whole (bash
syntax, and every ``maws-scale`` command line in it). Synopses with placeholders (``CONFIG``, ``[--opt]``) go in
```text fences. ``make demo`` / ``make test`` are checked with ``make -n``.

Everything runs in order, in one sandbox per session (links to configs/, jobs/, benchmarks/…; small copies of the
demo's data sets; tiny step counts appended to every ``train``/``pipeline``/``bench`` command, which take
``key=value`` overrides anywhere). A failure names the file, the line and the command.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from dist_support import fresh_process_env

from maws_scale.cli import build_parser
from maws_scale.data.fashion_mnist import DEFAULT_DIR

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINKED = ["configs", "jobs", "ds_configs", "benchmarks", "kernels", "Makefile", "setup.py", "constraints.txt"]
MARKERS = ("cluster", "gpu", "long")
COMMAND_TIMEOUT = 300  # seconds (wall, on a loaded machine); a command that takes longer on CPU is marked "# long"
# appended to commands that train (a few steps of the demo's tiny ViT) and evaluate (small probe sets)
TINY = {
    "train": ["train.steps=2", "train.log_every=1", "eval.max_train=200", "eval.few_shot=[1]", "eval.seeds=1"],
    "bench": ["train.steps=2"],
}
TINY["pipeline"] = TINY["train"]
TINY["eval"] = TINY["train"][2:]
SHIM = """#!/bin/sh
# maws-scale as documented, with tiny step counts appended where it trains (tests/test_docs_commands.py)
extra=""
case "$1" in {cases} esac
exec "{python}" -m maws_scale.cli "$@" $extra
"""


@dataclass
class Command:
    doc: Path
    line: int
    text: str  # the logical line (continuations joined), marker comment included
    marker: str | None
    fence_long: bool

    def where(self) -> str:
        name = self.doc.relative_to(ROOT) if self.doc.is_relative_to(ROOT) else self.doc.name
        return f"{name}:{self.line}: {self.text.strip()}"


def commands_in(doc: Path) -> list[Command]:
    """The logical lines of the ```bash fences of ``doc`` (comment-only and blank lines left out)."""
    out: list[Command] = []
    lines = doc.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```bash":
            i += 1
            continue
        i += 1
        fence_long = i < len(lines) and lines[i].strip().startswith("# long")
        while i < len(lines) and lines[i].strip() != "```":
            start, text = i + 1, lines[i]
            while text.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text.rstrip()[:-1] + " " + lines[i].strip()
            i += 1
            if text.strip() and not text.strip().startswith("#"):
                found = re.search(r"#\s*(\w+)\s*$", text)
                marker = found.group(1) if found and found.group(1) in MARKERS else None
                out.append(Command(doc, start, text, marker, fence_long))
    return out


ALL = [c for doc in DOCS for c in commands_in(doc)]


def maws_argvs(text: str) -> list[list[str]]:
    """Every ``maws-scale`` (or ``-m/--module maws_scale.cli``) argument list in a shell line."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|<>()")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens, argvs, current = list(lexer), [], None
    for i, token in enumerate(tokens):
        if current is not None:
            if token in (";", "&", "&&", "|", "||", ">", ">>", "<", ")"):
                argvs.append(current)
                current = None
            else:
                current.append(token)
        elif token.endswith("maws-scale") or (token == "maws_scale.cli" and tokens[i - 1] in ("-m", "--module")):
            current = []
    if current is not None:
        argvs.append(current)
    return argvs


def check_parses(command: Command) -> None:
    """Executable present (a line of a '# long' fence may be part of a loop: not checked), and every maws-scale
    command line accepted by the parser."""
    for argv in maws_argvs(command.text):
        try:
            build_parser().parse_args(argv)
        except SystemExit as err:
            pytest.fail(f"{command.where()}\n  maws-scale refuses its arguments (exit {err.code})")
    if command.fence_long:
        return
    first = shlex.split(command.text, comments=True)[0]
    known = {"for", "export", "mkdir", "cd", "npm", "wait", "done", "nice", "python", "deepspeed", "torchrun", "bash"}
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    assert first in known or shutil.which(first, path=path) or (ROOT / first).exists() or "=" in first, (
        f"{command.where()}\n  no such executable: {first}"
    )


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh-clone stand-in: links to the repo's folders, small demo data, a maws-scale shim with tiny steps."""
    if not Path(DEFAULT_DIR, "train-images-idx3-ubyte.gz").is_file():
        pytest.fail("the docs commands need Fashion-MNIST: apt-get install -y dataset-fashion-mnist")
    home = tmp_path_factory.mktemp("fresh-clone")
    for name in LINKED:
        (home / name).symlink_to(ROOT / name)
    bin_dir = home / ".bin"
    bin_dir.mkdir()
    cases = " ".join(f'{cmd}) extra="{" ".join(extra)}" ;;' for cmd, extra in TINY.items())
    shim = bin_dir / "maws-scale"
    shim.write_text(SHIM.format(cases=cases, python=sys.executable))
    shim.chmod(0o755)
    make = bin_dir / "make"  # `make demo` / `make test` are the README's, checked without running them
    make.write_text(f'#!/bin/sh\nexec "{shutil.which("make")}" -n -C "{ROOT}" "$@" >/dev/null\n')
    make.chmod(0o755)
    env = {
        **fresh_process_env(),
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
    }
    data = home / "data" / "fmnist-mosaic"
    build = [
        sys.executable,
        "-m",
        "maws_scale.cli",
        "data",
        "build",
        "--source",
        "fashion-mnist",
        "--input",
        DEFAULT_DIR,
    ]
    for split, variant, limit, extra in (
        ("train", "mosaic", 640, ["--noise", "0.2"]),
        ("train", "single", 200, []),
        ("test", "single", 200, []),
    ):
        name = "train" if variant == "mosaic" else f"probe-{split}"
        argv = [*build, "--output", str(data / name), "--split", split, "--variant", variant, "--limit", str(limit)]
        _setup(home, env, [*argv, *extra])
    _setup(
        home, env, [sys.executable, "-m", "maws_scale.cli", "data", "vocab", str(data / "train"), "--min-count", "1"]
    )
    return home, env


def _setup(home: Path, env: dict[str, str], argv: list[str]) -> None:
    result = subprocess.run(argv, cwd=home, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"sandbox setup failed: {shlex.join(argv[1:])}\n{result.stderr[-2000:]}")


def test_docs_have_commands() -> None:
    assert len(ALL) > 40 and {c.doc.name for c in ALL} >= {"README.md", "training.md", "jobs.md"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_every_documented_command_runs(doc: Path, sandbox: tuple[Path, dict[str, str]]) -> None:
    home, env = sandbox
    fence_checks = []
    for command in commands_in(doc):
        if command.fence_long or command.marker in ("gpu", "long"):
            check_parses(command)
            fence_checks.append(command)
            continue
        text = re.sub(r"\s*#[^'\"]*$", "", command.text)  # the trailing comment
        if command.marker == "cluster":
            text += " --dry-run"
        start = time.perf_counter()
        try:
            result = subprocess.run(
                ["bash", "-c", text], cwd=home, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
            )
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"{command.where()}\n  still running after {COMMAND_TIMEOUT} s: mark it '# long' or make it small"
            )
        print(f"{time.perf_counter() - start:6.1f} s  {command.where()}")
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-8:])
            pytest.fail(f"{command.where()}\n  exit {result.returncode}; last lines:\n{tail}")
    for command in fence_checks:  # bash syntax of the parsed-only lines
        if command.fence_long:
            continue
        syntax = subprocess.run(["bash", "-n", "-c", command.text], capture_output=True, text=True)
        assert syntax.returncode == 0, f"{command.where()}\n  {syntax.stderr.strip()}"


def test_a_drifted_command_fails_naming_file_line_and_command(tmp_path: Path) -> None:
    doc = tmp_path / "drift.md"
    doc.write_text("text\n```bash\nmaws-scale train configs/demo.yaml --no-such-flag   # gpu\n```\n")
    (command,) = commands_in(doc)
    assert command.line == 3 and command.marker == "gpu"
    doc_root = Command(ROOT / "docs" / "drift.md", 3, command.text, "gpu", False)
    with pytest.raises(pytest.fail.Exception, match=r"docs/drift.md:3: maws-scale train configs/demo.yaml --no-such"):
        check_parses(doc_root)


def test_continuations_markers_and_long_fences_are_read(tmp_path: Path) -> None:
    import textwrap

    text = textwrap.dedent(
        """\
        ```bash
        maws-scale plan configs/demo.yaml \\
            --gpus 8   # cluster
        # a comment
        ```
        ```bash
        # long: hours
        for s in 0 1; do maws-scale sweep x.yaml --only "*seed$s" & done; wait
        ```
        """
    )
    path = tmp_path / "probe.md"
    path.write_text(text)
    commands = commands_in(path)
    assert [(c.line, c.marker, c.fence_long) for c in commands] == [(2, "cluster", False), (8, None, True)]
    assert "--gpus 8" in commands[0].text
    assert maws_argvs(commands[1].text) == [["sweep", "x.yaml", "--only", "*seed$s"]]
