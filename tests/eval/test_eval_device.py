"""Evaluation runs on the job's device (issue 30 item 7e), tested on CPU by recording the device each path asks for:
``maws-scale eval`` defaults to this process's GPU, and CLIP checkpoints (probes + zero-shot) are loaded onto the
device the probes use, not left on CPU."""

from __future__ import annotations

import pytest
import torch

import maws_scale.eval as eval_package
import maws_scale.eval.zero_shot as zero_shot
from maws_scale.cli import main
from maws_scale.config import load_config
from maws_scale.eval import evaluate_checkpoint


@pytest.mark.parametrize(
    ("cuda", "args", "expected"),
    [(True, [], "cuda:1"), (False, [], "cpu"), (True, ["--device", "cpu"], "cpu")],
)
def test_the_eval_command_runs_on_the_jobs_device(monkeypatch, cuda, args, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setenv("LOCAL_RANK", "1")
    seen = []

    def recorded(cfg, checkpoint, tracker=None, device=None, shard=(0, 1)):
        seen.append(device)
        return {"eval/linear_top1": 1.0}

    monkeypatch.setattr(eval_package, "evaluate_checkpoint", recorded)
    assert main(["eval", "random", "--json", *args, "tracking.enabled=false"]) == 0
    assert [str(d) for d in seen] == [expected]


class Loaded(Exception):
    pass


def test_a_clip_checkpoint_is_loaded_onto_the_evaluation_device(monkeypatch, tmp_path):
    path = tmp_path / "clip.pt"
    torch.save({"text_proj.weight": torch.zeros(2, 2)}, path)  # what marks a two-tower checkpoint
    seen = []

    def recorded(cfg, checkpoint_path, device=None):
        seen.append(device)
        raise Loaded

    monkeypatch.setattr(zero_shot, "load_clip", recorded)
    with pytest.raises(Loaded):
        evaluate_checkpoint(load_config(None, []), path, device=torch.device("cpu"))
    assert seen == [torch.device("cpu")]


def test_a_launched_rank_evaluates_its_shard_on_its_gpu_and_prints_nothing(monkeypatch, capsys):
    """Under a launcher (WORLD_SIZE > 1) a rank joins the world, extracts its shard on the GPU the world bound it to,
    gets no tracker, waits for rank 0 and prints nothing (CUDA stood in by the DistInfo a NCCL world returns)."""
    import maws_scale.commands.eval as eval_command
    import maws_scale.parallel.distributed as distributed
    import maws_scale.parallel.waits as waits

    monkeypatch.setenv("WORLD_SIZE", "2")
    bound = distributed.DistInfo(rank=1, world_size=2, local_rank=1, device=torch.device("cuda", 1))
    monkeypatch.setattr(distributed, "init_distributed", lambda backend="auto": bound)
    waited = []
    monkeypatch.setattr(waits, "wait_for_rank0", lambda minutes: waited.append(minutes))
    monkeypatch.setattr(eval_command, "_tracker", lambda cfg, checkpoint: pytest.fail("only rank 0 tracks"))
    seen = []

    def recorded(cfg, checkpoint, tracker=None, device=None, shard=(0, 1)):
        seen.append((str(device), shard, tracker))
        return None  # what the other ranks get back

    monkeypatch.setattr(eval_package, "evaluate_checkpoint", recorded)
    assert main(["eval", "random", "--json", "tracking.enabled=true"]) == 0
    assert seen == [("cuda:1", (1, 2), None)] and len(waited) == 1
    assert capsys.readouterr().out == ""
