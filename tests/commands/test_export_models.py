"""`maws-scale export` and `maws-scale models`, and the generated table in docs/models.md."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from maws_scale.cli import main
from maws_scale.commands.models import markdown_table, model_rows
from maws_scale.models import build_encoder, build_mae, build_wsp

DOCS = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def _fill(model):
    torch.manual_seed(0)
    for p in model.parameters():
        p.data.normal_()
    return model


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_export_mae_checkpoint_to_timm_encoder(tmp_path, fmt, timm_naming):
    _, timm_vit_keys, _ = timm_naming
    mae = _fill(build_mae("vit_micro_p4"))
    src = tmp_path / "mae.pt"
    torch.save({"module": {f"module.{k}": v for k, v in mae.state_dict().items()}}, src)
    out = tmp_path / f"enc.{fmt}"
    assert main(["export", str(src), "--out", str(out), "--model", "vit_micro_p4"]) == 0
    state = load_file(out) if fmt == "safetensors" else torch.load(out, weights_only=True)
    shapes = sorted((k, tuple(v.shape)) for k, v in state.items())  # safetensors stores keys sorted
    assert shapes == sorted(timm_vit_keys(32, 2, 4, 16, 128))
    for key, value in state.items():
        assert torch.equal(value, mae.state_dict()[key])
    build_encoder("vit_micro_p4").load_state_dict(state)  # strict
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # .safetensors as readable as .pt (issue 25: it was 0600)
    assert not list(tmp_path.glob(".*.tmp"))


def test_export_with_and_without_head(tmp_path):
    wsp = _fill(build_wsp("vit_micro_p4", 6))
    src = tmp_path / "wsp.pt"
    torch.save(wsp.state_dict(), src)
    full, enc = tmp_path / "full.safetensors", tmp_path / "enc.pt"
    assert main(["export", str(src), "--out", str(full)]) == 0  # format from the suffix
    assert main(["export", str(src), "--out", str(enc), "--format", "pt", "--encoder-only"]) == 0
    with_head = load_file(full)
    assert with_head["head.weight"].shape == (6, 32)
    assert not any(k.startswith("head.") for k in torch.load(enc, weights_only=True))
    build_wsp("vit_micro_p4", 6).load_state_dict(with_head)


def test_export_resamples_and_refuses_mismatch(tmp_path):
    src = tmp_path / "enc.pt"
    torch.save(build_encoder("vit_micro_p4").state_dict(), src)
    out = tmp_path / "enc24.pt"
    assert main(["export", str(src), "--out", str(out), "--model", "vit_micro_p4", "--img-size", "24"]) == 0
    assert torch.load(out, weights_only=True)["pos_embed"].shape == (1, 37, 32)
    assert main(["export", str(src), "--out", str(tmp_path / "x.pt"), "--model", "vit_tiny_p4"]) == 1
    assert main(["export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "y.pt")]) == 1
    assert main(["export", str(src), "--out", str(tmp_path / "z.pt"), "--img-size", "24"]) == 2
    assert not (tmp_path / "x.pt").exists()


def test_models_json(capsys):
    assert main(["models", "--json", "--num-classes", "500"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["vit_l16"]["params"] == sum(p.numel() for p in build_encoder("vit_l16", device="meta").parameters())
    # vit_micro_p4 counted by hand (2 FLOPs per multiply-add): width 32, depth 2, MLP 128, 4 px patches of 16 px
    # images (16 patches + class token = 17 tokens; MAE keeps 1 + 4 visible), decoder 1 block of width 32.
    patch_embed = 2 * 16 * (3 * 4 * 4) * 32

    def block(tokens: int) -> int:  # qkv, proj, fc1, fc2, then q·kᵀ and p·v
        return 2 * tokens * 32 * (96 + 32 + 128 + 128) + 2 * 2 * tokens * tokens * 32

    wsp_forward = patch_embed + 2 * block(17) + 2 * 32 * 500  # + the 500-class head
    mae_forward = patch_embed + 2 * block(5) + 2 * 5 * 32 * 32 + block(17) + 2 * 17 * 32 * 48  # embed, block, pred
    micro = rows["vit_micro_p4"]
    assert (wsp_forward, mae_forward) == (990_720, 818_560)
    assert micro["wsp_fwd_flops"] == wsp_forward and micro["wsp_step_flops"] == 3 * wsp_forward
    assert micro["mae_fwd_flops"] == mae_forward and micro["mae_step_flops"] == 3 * mae_forward
    assert main(["models"]) == 0 and "vit_6.5b14" in capsys.readouterr().out


def test_docs_table_is_the_generated_one():
    """docs/models.md must hold exactly what `maws-scale models --markdown` prints (regenerate it if this fails)."""
    assert markdown_table(model_rows()) in DOCS.read_text()


def test_export_keeps_the_trained_resolution_and_records_it(tmp_path, capsys):
    src = tmp_path / "consolidated.pt"
    torch.save(build_encoder("vit_micro_p4", img_size=28, pool="gap").state_dict(), src)  # registry size: 16
    sidecar = {"model": "vit_micro_p4", "img_size": 28, "patch": 4, "pool": "gap", "stage": "wsp"}
    src.with_suffix(".json").write_text(json.dumps(sidecar))
    out = tmp_path / "enc.safetensors"
    assert main(["export", str(src), "--out", str(out), "--model", "vit_micro_p4"]) == 0
    assert load_file(out)["pos_embed"].shape == (1, 50, 32)  # 7x7 + cls: not resampled to the registry's 4x4
    assert "resampled" not in capsys.readouterr().err
    from safetensors import safe_open

    with safe_open(str(out), "pt") as handle:
        metadata = handle.metadata()
    assert (metadata["model"], metadata["img_size"], metadata["pool"]) == ("vit_micro_p4", "28", "gap")
    argv = ["export", str(src), "--out", str(tmp_path / "e.pt"), "--model", "vit_micro_p4", "--img-size", "16"]
    assert main(argv) == 0
    assert "pos_embed resampled from 7×7 to 4×4" in capsys.readouterr().err  # said, not silent
    assert json.loads((tmp_path / "e.json").read_text())["img_size"] == "16"


# ----- issue 26: bad inputs to export end with one line and exit 1 (a run failure) or 2 (usage); nothing written ---
def _valid_pt(tmp_path: Path) -> Path:
    src = tmp_path / "enc.pt"
    torch.save(_fill(build_encoder("vit_micro_p4")).state_dict(), src)
    return src


@pytest.mark.parametrize("damage", ["empty", "random", "truncated", "truncated_safetensors", "nan"])
def test_export_of_an_unreadable_or_non_finite_file_fails_in_one_line(tmp_path, capsys, damage):
    src = _valid_pt(tmp_path)
    data = src.read_bytes()
    if damage == "truncated_safetensors":
        from safetensors.torch import save_file

        save_file(torch.load(src, weights_only=True), str(tmp_path / "enc.safetensors"))
        src = tmp_path / "enc.safetensors"
        data = src.read_bytes()
    if damage == "nan":
        state = torch.load(src, weights_only=True)
        state["blocks.0.attn.qkv.weight"][0, 0] = float("nan")
        torch.save(state, src)
    else:
        cut = {"empty": b"", "random": torch.randint(0, 256, (len(data),), dtype=torch.uint8).numpy().tobytes()}
        src.write_bytes(cut.get(damage, data[: len(data) // 2]))
    out = tmp_path / "out.safetensors"
    assert main(["export", str(src), "--out", str(out), "--model", "vit_micro_p4"]) == 1
    err = capsys.readouterr().err
    assert str(src) in err and ("NaN" in err if damage == "nan" else "cannot read" in err), err
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--img-size", "30"], "not a multiple of the patch size 4"),
        (["--img-size", "-28"], "--img-size -28: must be a positive"),
        (["--img-size", "0"], "--img-size 0: must be a positive"),
        (["--out-dir"], "is a directory"),
    ],
)
def test_export_refuses_a_bad_size_or_a_directory_as_out(tmp_path, capsys, extra, message):
    src = _valid_pt(tmp_path)
    out = tmp_path / "out.pt"
    if extra == ["--out-dir"]:
        out.mkdir()
        extra = []
    assert main(["export", str(src), "--out", str(out), "--model", "vit_micro_p4", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.is_file() and not out.with_suffix(".json").exists()


def test_export_on_a_full_disk_names_the_file_and_leaves_no_partial_file(tmp_path, capsys):
    src = _valid_pt(tmp_path)
    out = tmp_path / "out.pt"
    (tmp_path / ".out.pt.tmp").symlink_to("/dev/full")  # every write there fails with ENOSPC
    assert main(["export", str(src), "--out", str(out)]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert f"cannot write exported weights {out}: No space left on device" in err, err
    assert not out.exists() and not (tmp_path / ".out.pt.tmp").exists()


@pytest.mark.parametrize("damage", ["empty", "truncated", "random"])
def test_export_of_a_step_directory_with_a_damaged_model_file_fails_in_one_line(tmp_path, capsys, damage):
    step = tmp_path / "run" / "mae" / "checkpoints" / "step_00000003"
    step.mkdir(parents=True)
    model = {"module": _fill(build_encoder("vit_micro_p4")).state_dict()}
    torch.save(model, step / "mp_rank_00_model_states.pt")
    size = (step / "mp_rank_00_model_states.pt").stat().st_size
    marker = {"step": 3, "world_size": 1, "zero_stage": 0, "files": {"mp_rank_00_model_states.pt": size}}
    (step / "complete").write_text(json.dumps(marker))
    data = {"empty": b"", "truncated": b"PK" * 100, "random": bytes(size)}[damage]
    (step / "mp_rank_00_model_states.pt").write_bytes(data)
    out = tmp_path / "out.pt"
    assert main(["export", str(step), "--out", str(out)]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert str(step) in err and ("damaged" in err if damage != "random" else "cannot read" in err), err
    assert not out.exists()


def test_export_of_a_step_directory_refuses_a_bad_size_before_consolidating(tmp_path, capsys):
    step = tmp_path / "step_00000001"
    step.mkdir()  # not even a checkpoint: the usage error comes first, exit 2
    assert main(["export", str(step), "--out", str(tmp_path / "o.pt"), "--img-size", "-28"]) == 2
    assert "--img-size -28: must be a positive" in capsys.readouterr().err
