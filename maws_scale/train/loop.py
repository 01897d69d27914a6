"""The one training loop, for every stage: accumulate, clip, schedule, guard, log, checkpoint, resume.

``train_stage(cfg)`` runs ``cfg.stage`` to ``train.steps`` (or ``train.epochs``) optimizer steps on whatever world
the launcher made (deepspeed, torchrun, or one plain process) and leaves ``<output_dir>/<stage>/consolidated.pt``.
The Stage object (``train/stages.py``) is the only thing that differs between MAE and WSP.

Non-finite guard: a micro-batch whose loss is not finite on any rank marks its step bad and the update is skipped
(as is one DeepSpeed finds a non-finite gradient norm for); ``train.nan_tolerance`` bad steps in a row roll back
to the newest *healthy* checkpoint, one whose next step was finite (at most ``MAX_ROLLBACKS`` times per run). No
checkpoint is saved during a bad streak (a save that falls due then waits for the next finite step), and final
weights with non-finite values are never written as ``consolidated.pt``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from rich.markup import escape

from maws_scale.config import ConfigError, RunConfig
from maws_scale.errors import RunError, write_error
from maws_scale.kernels.dispatch import check_kernels
from maws_scale.models.attention import pin_attention_backends
from maws_scale.parallel.distributed import DistInfo, init_distributed
from maws_scale.parallel.engine import set_lr
from maws_scale.parallel.optimizer import optimizer_impl
from maws_scale.parallel.plan import full_numel, make_plan
from maws_scale.parallel.step_guard import global_grad_norm
from maws_scale.parallel.waits import wait_for_rank0
from maws_scale.track.mlflow import make_tracker, mlflow_metric_names, save_loss_curve
from maws_scale.track.throughput import (
    ThroughputMeter,
    data_wait_advice,
    datasheet_peak_tflops,
    device_name,
    measure_peak_tflops,
    peak_basis,
    peak_memory_gib,
)
from maws_scale.train.checkpoint import (
    CONSOLIDATED,
    CheckpointInfo,
    CheckpointManager,
    load_rank_state,
    load_trainer_state,
    set_rng_state,
)
from maws_scale.train.ema import WeightEMA
from maws_scale.train.hooks import StepHooks
from maws_scale.train.preflight import preflight
from maws_scale.train.rundir import check_stage_dir, trim_metrics
from maws_scale.train.schedule import Schedule
from maws_scale.train.stages import Stage, make_stage

log = logging.getLogger("maws_scale.train")
console = Console(stderr=True, soft_wrap=True, highlight=False)

MAX_ROLLBACKS = 3
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def stage_dir(cfg: RunConfig) -> Path:
    """``<output_dir>/<stage>``: the stage's config, DeepSpeed config, metrics, checkpoints, consolidated weights."""
    return Path(cfg.output_dir) / cfg.stage


def checkpoint_root(cfg: RunConfig) -> Path:
    return Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else stage_dir(cfg) / "checkpoints"


@dataclass
class StageResult:
    """What a finished stage leaves behind."""

    stage: str
    steps: int
    stage_dir: Path
    consolidated: Path
    final_loss: float | None
    skipped_steps: int
    rollbacks: int
    losses: list[float] = field(default_factory=list)


@dataclass
class _Counters:
    skipped_steps: int = 0
    consecutive_bad: int = 0
    rollbacks: int = 0


def _all_reduce(tensor: torch.Tensor, op=None) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
    return tensor


class Trainer:
    """One stage's run; ``Trainer(cfg, ...).run()`` (see :func:`train_stage`)."""

    def __init__(
        self,
        cfg: RunConfig,
        info: DistInfo | None = None,
        stage: Stage | None = None,
        loader_factory: Any = None,
    ) -> None:
        self.cfg = cfg
        self.info = info or init_distributed(cfg.parallel.backend)
        self.dir = stage_dir(cfg)
        self.manager = CheckpointManager(checkpoint_root(cfg), keep_last=cfg.checkpoint.keep_last)
        self.loader_factory = loader_factory or _default_loader
        self._stage = stage
        self.counters = _Counters()
        self.hooks = StepHooks()  # the step's phases, observable (perf/profile.py) without patching anything
        self.losses: list[float] = []
        self.history: list[tuple[int, float]] = []
        self.stage_sums: dict[str, torch.Tensor] = {}  # the last step's extra stage metrics, summed over micro-batches
        self._unconfirmed: Path | None = None  # the last checkpoint saved or loaded, until a finite step follows it
        self.best: float | None = None  # the best held-out metric so far (stages that evaluate: best.pt keeps it)
        self.ema: WeightEMA | None = None  # the weight EMA, for stages that ask for one (finetune.ema)
        # data wait and ETA (reset when the loop starts; bench drives train_step without it)
        self.data_wait, self._clock, self._start_step, self._last_log = 0.0, time.perf_counter(), 0, None
        self._warned_data_wait = False

    # ----- set-up -------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, info = self.cfg, self.info
        self.dp_size, self.accum = cfg.batch_layout(info.world_size)
        preflight([cfg], info.world_size, data=self.loader_factory is _default_loader, device=info.device)
        self.dtype = DTYPES[cfg.parallel.precision]
        self.resume = self.manager.resolve(self._resume_setting())
        if self._stage is None:
            num_classes = None
            if cfg.stage == "wsp":
                num_classes = self.loader_factory(cfg, "wsp", 0, 1).num_classes
            self._stage = make_stage(cfg, num_classes)
        self.stage = self._stage

        self.plan = make_plan(cfg, info)  # the one parallel seam: groups, engine, build, load, save, consolidate
        self.plan.configure_engine(self.stage.build_model(device="meta"), self.accum, self.resume)

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model = self.plan.build(self.stage.build_model)
        pin_attention_backends(model, info.device)  # decided here, never inside a (checkpointed) forward
        if getattr(model, "kernels_impl", None) == "auto":
            check_kernels(info.device, self.dtype)  # a kernel that fails to compile: torch references, one warning
        self.stage.bind(self.plan)
        if self.resume is None:
            self.stage.initialize_weights(model, self.plan)
        self.engine, self.guard = self.plan.initialize_engine(model)
        decay = self.stage.ema_decay()
        self.ema = WeightEMA(self.engine.module, decay) if decay > 0 else None
        # One stream per data-parallel rank: the ranks that share a data-parallel rank (model-parallel shards) hold the
        # same activations and must drop the same samples (drop-path), exactly as one unsplit rank would.
        torch.manual_seed(cfg.seed + 1 + self.plan.dp_rank)

        self.loader = self.loader_factory(cfg, self.stage.data_stage, self.plan.dp_rank, self.plan.dp_size)
        self.total_steps = self._total_steps()
        self.schedule = Schedule.from_config(cfg, self.total_steps)
        self.step = 0
        if self.resume is not None:
            self._check_resume()
            self._load(self.resume)
        self.tracker = make_tracker(cfg, self.dir, info.is_main)
        self._start_tracking()

    def _resume_setting(self) -> str | None:
        """``checkpoint.resume``, or 'auto' where the stage dir already holds this config's run; another config's run
        there is refused (``train/rundir.py``): a re-run continues its own run or stops, it never mixes two."""
        has_results = self.manager.latest() is not None or (self.dir / CONSOLIDATED).is_file()
        same = check_stage_dir(self.cfg, self.dir, has_results)
        if same and has_results and self.cfg.checkpoint.resume is None:
            if self.info.is_main:
                console.print(f"{self._tag} {self.dir} holds a run of this config: continuing it (resume=auto)")
            return "auto"
        return self.cfg.checkpoint.resume

    def _check_resume(self) -> None:
        self.plan.check_resume(self.resume.path, self.resume.meta)
        if self.resume.meta.get("stage", self.cfg.stage) != self.cfg.stage:
            raise ConfigError(
                f"checkpoint.resume: {self.resume.path} belongs to stage '{self.resume.meta['stage']}', "
                f"not '{self.cfg.stage}'"
            )

    def _total_steps(self) -> int:
        train = self.cfg.train
        if train.steps is not None:
            return train.steps
        return max(1, math.ceil(train.epochs * self.loader.epoch_size / train.global_batch))

    def _start_tracking(self) -> None:
        cfg, info = self.cfg, self.info
        self.engine_record: Path | None = None  # the engine's filled config, written for the record
        if info.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.engine_record = self.plan.write_engine_config(self.dir)
            (self.dir / "config.yaml").write_text(cfg.to_yaml())
            trim_metrics(self.dir / "metrics.jsonl", self.resume.step if self.resume is not None else 0)
        precision = cfg.parallel.precision
        name = device_name(info.device)
        self.datasheet_peak = cfg.tracking.peak_tflops or datasheet_peak_tflops(name, precision)
        if dist.is_initialized():
            dist.barrier()  # every rank measures at once, as they will share the machine while training
        self.measured_peak = measure_peak_tflops(info.device, precision)
        self.meter = ThroughputMeter(
            self.stage.flops_per_sample(),
            self.stage.tokens_per_sample(),
            info.world_size,
            self.datasheet_peak,
            self.measured_peak,
        )
        # measured, so different on every attempt: a tag and a metric, never a param (MLflow refuses changed params)
        classes = getattr(self.stage, "num_classes", None)
        self.tracker.log_tags(
            {"device": name, "datasheet_peak_tflops": str(self.datasheet_peak), "num_classes": str(classes)}
        )
        self.tracker.log_metrics({"perf/measured_peak_tflops": self.measured_peak}, step=self.step)
        if self.resume is not None and self.resume.step > 0:
            return  # the MLflow run of the interrupted attempt already has the params
        self.tracker.log_params(
            {
                **cfg.model_dump(mode="json", exclude={"stages"}),
                "derived": {
                    "world_size": info.world_size,
                    "dp_size": self.dp_size,
                    "layout": self.plan.describe(),
                    "grad_accum": self.accum,
                    "peak_lr": cfg.peak_lr(),
                    "total_steps": self.total_steps,
                    "warmup_steps": self.schedule.warmup_steps,
                    "datasheet_peak_tflops": self.datasheet_peak,
                    "datasheet_peak_basis": peak_basis(precision, fp8=cfg.parallel.fp8),  # TF32 on/off; FP8 vs bf16
                    "optimizer": optimizer_impl(cfg),
                    "flops_per_sample": self.stage.flops_per_sample(),
                },
            }
        )
        self.tracker.log_artifact(self.dir / "config.yaml")
        if self.engine_record is not None:
            self.tracker.log_artifact(self.engine_record)
        if self.stage.init_report is not None and info.is_main:
            path = self.dir / "handoff.json"
            path.write_text(json.dumps(self.stage.init_report, indent=2))
            self.tracker.log_artifact(path)
            if "summary" in self.stage.init_report:
                console.print(f"{escape(f'[{cfg.stage}]')} init from checkpoint: {self.stage.init_report['summary']}")

    # ----- checkpoints --------------------------------------------------------------------------------------------
    @property
    def _tag(self) -> str:
        return escape(f"[{self.cfg.stage}]")

    def _trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "schedule": self.schedule.state_dict(),
            "loader": self.loader.state_dict(),
            "skipped_steps": self.counters.skipped_steps,
            "rollbacks": self.counters.rollbacks,
            "stage": self.cfg.stage,
            "param_group_names": self.guard.group_names,
        }

    def save(self) -> Path:
        meta = {
            "stage": self.cfg.stage,
            "world_size": self.info.world_size,
            **self.plan.checkpoint_meta(),
            "precision": self.cfg.parallel.precision,
            "model": self.cfg.model.name,
        }
        state = self._trainer_state()
        path = self.manager.save(
            lambda parent, tag: self.plan.save_engine(self.engine, parent, tag, state),
            self.step,
            state,
            rank_state=self._rank_state(state),
            meta=meta,
            files=self.plan.checkpoint_files(),
        )
        self._unconfirmed = path
        return path

    def _rank_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """What each rank saves beside the engine: its loader position; rank 0 also the weight EMA (every rank holds
        the same one: the EMA needs whole weights on every rank)."""
        rank_state: dict[str, Any] = {"loader": state["loader"]}
        if self.ema is not None and self.info.is_main:
            rank_state["ema"] = self.ema.state_dict()
        return rank_state

    def _load(self, info: CheckpointInfo) -> None:
        how = self.plan.load_checkpoint(self.engine, self.guard, info)
        state = load_trainer_state(info)
        self.step = int(state["step"])
        self.loader.load_state_dict(state["loader"])  # global sample position: valid on any DP size
        self.counters.skipped_steps = int(state["skipped_steps"])
        self.counters.rollbacks = int(state.get("rollbacks", 0))
        if self.ema is not None:
            saved = load_rank_state(info, 0) or {}
            if "ema" not in saved:
                raise ConfigError(f"finetune.ema: {info.path} holds no weight EMA (saved by a run without it)")
            self.ema.load_state_dict(saved["ema"])
        rank_state = load_rank_state(info, self.info.rank) if info.world_size == self.info.world_size else None
        if rank_state is not None:
            set_rng_state(rank_state["rng"])
        else:
            torch.manual_seed(self.cfg.seed + 1 + self.plan.dp_rank + 7919 * self.step)
        self._unconfirmed = info.path
        if self.info.is_main:
            console.print(f"{self._tag} resumed from {info.path} at step {self.step} ({how})")

    def _rollback(self) -> None:
        latest = self.manager.latest_healthy()
        tol = self.cfg.train.nan_tolerance
        if latest is None:
            raise RunError(
                f"{tol} optimizer steps in a row had a non-finite loss or gradient (train.nan_tolerance={tol}) and "
                f"there is no checkpoint in {self.manager.root} to roll back to (none saved, or none followed by a "
                "finite step); lower optim.lr / base_lr, set train.clip_grad, or use parallel.precision=bf16 instead "
                "of fp16"
            )
        if self.counters.rollbacks >= MAX_ROLLBACKS:
            raise RunError(
                f"training diverged again after {MAX_ROLLBACKS} rollbacks to {latest.path}; lower the LR or clip"
            )
        skipped, rollbacks = self.counters.skipped_steps, self.counters.rollbacks + 1
        self._load(latest)
        self.counters = _Counters(skipped_steps=skipped, consecutive_bad=0, rollbacks=rollbacks)
        if self.info.is_main:
            console.print(f"[bold yellow]{self._tag} rolled back to step {self.step} ({latest.path})")

    # ----- the loop -----------------------------------------------------------------------------------------------
    def train_step(self, batches) -> tuple[float, bool]:
        """One optimizer step over ``accum`` micro-batches; → (mean loss over ranks and micro-batches, skipped).

        Losses and non-finite flags stay on the device; they are summed over ranks and read once, at the last
        micro-batch, for the skip decision (:meth:`StepGuard.resolve`): the step's only host sync."""
        engine, device, hooks = self.engine, self.info.device, self.hooks
        set_lr(engine, self.schedule.lr(self.step))
        window = torch.zeros(2, dtype=torch.float64, device=device)
        self.stage_sums = {}
        for micro in range(self.accum):
            waited = time.perf_counter()
            batch = next(batches)
            self.data_wait += time.perf_counter() - waited
            loss, extra = hooks.run("forward", self.stage.loss, engine, batch, device, self.dtype)
            for name, value in extra.items():  # stays on the device; read on log steps (:meth:`_stage_metrics`)
                self.stage_sums[name] = self.stage_sums.get(name, 0.0) + value.detach().double()
            finite = torch.isfinite(loss.detach())
            window += torch.stack([torch.where(finite, loss.detach(), 0.0).double(), (~finite).double()])
            # = loss when finite; a bad window is skipped
            hooks.run("backward", engine.backward, torch.nan_to_num(loss, 0.0, 0.0, 0.0))
            if micro == self.accum - 1:
                loss_sum, bad = self.guard.resolve(_all_reduce(window))
            hooks.run("optimizer", engine.step)
        window_bad = bad > 0
        skipped = window_bad or self.guard.skipped_by_grads or not engine.was_step_applied()
        world = dist.get_world_size() if dist.is_initialized() else 1
        mean = loss_sum / (world * self.accum) if not window_bad else float("nan")
        return mean, skipped

    def run(self) -> StageResult:
        """Set up and train; a failure or interrupt closes the MLflow run as FAILED / KILLED, then propagates."""
        try:
            return self._run()
        except BaseException as err:
            tracker = getattr(self, "tracker", None)
            if tracker is not None and not getattr(self, "_closed", False):
                tracker.finish("KILLED" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "FAILED")
            raise

    def _run(self) -> StageResult:
        self.setup()
        cfg = self.cfg
        batches = iter(self.loader)
        log_every = cfg.train.log_every
        every = cfg.checkpoint.every
        saved_at = self.resume.step if self.resume is not None else -1
        save_due = False
        self.meter.reset()
        self.data_wait, self._clock, self._start_step, self._last_log = 0.0, time.perf_counter(), self.step, None
        self._summary()
        while self.step < self.total_steps:
            loss, skipped = self.train_step(batches)
            self.step += 1
            self.meter.update(cfg.train.global_batch)
            self.counters.skipped_steps += int(skipped)
            if self.ema is not None and not skipped:
                self.ema.update()
            self.counters.consecutive_bad = self.counters.consecutive_bad + 1 if skipped else 0
            if self._unconfirmed is not None:  # only the very next step decides: a bad one rules it out for good
                if not skipped:
                    self.manager.mark_healthy(self._unconfirmed)
                self._unconfirmed = None
            metrics = {"loss": loss, "lr": self.schedule.lr(self.step - 1)}
            if self.step % log_every == 0 or self.step == self.total_steps:
                norm = global_grad_norm(self.engine, self.guard)  # a device read: log steps only
                if norm is not None:
                    metrics["grad_norm"] = norm
                metrics.update(self._stage_metrics())
                metrics.update(self._periodic_metrics())
                self._print(metrics)
            self._record(metrics)
            every_eval = self.stage.eval_every()
            if every_eval and self.step % every_eval == 0 and self.step < self.total_steps:
                saved_at = self._evaluate(saved_at)
            if self.counters.consecutive_bad >= cfg.train.nan_tolerance:
                self._rollback()
                batches = iter(self.loader)
                saved_at, save_due = self.step, False
                continue
            save_due |= bool(every) and self.step % every == 0
            if save_due and self.counters.consecutive_bad == 0 and self.step < self.total_steps:
                self.save()  # never during a non-finite streak: such a checkpoint could only restore the divergence
                saved_at, save_due = self.step, False
        if saved_at != self.step:
            self.save()
        self._evaluate(self.step)
        return self._finish()

    def _evaluate(self, saved_at: int) -> int:
        """The stage's held-out metrics (collective), logged as ``eval/<name>``; a new best is saved as a checkpoint
        and consolidated into ``best.pt`` (+ ``best.json``). Returns the step of the newest checkpoint."""
        result = self.stage.evaluate(self.engine, self.plan, self.info.device, self.dtype)
        if not result:
            return saved_at
        metrics = {f"eval/{k}": float(v) for k, v in result.items()}
        if self.ema is not None:
            with self.ema.swapped():
                averaged = self.stage.evaluate(self.engine, self.plan, self.info.device, self.dtype)
            metrics.update({f"eval/ema_{k}": float(v) for k, v in averaged.items() if k != "eval_samples"})
            if self.info.is_main:
                self.ema.save(self.dir / "ema.pt")  # the averaged weights as they are now (timm names)
        key, value = next(iter(metrics.items()))
        if self.info.is_main:
            self.tracker.log_metrics(mlflow_metric_names(metrics), step=self.step)
            with (self.dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps({"step": self.step, **metrics}) + "\n")
            console.print(f"{self._tag} step {self.step}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        best_file = self.dir / "best.json"
        if self.best is None and best_file.is_file():  # a resumed run keeps the best of its earlier attempt
            self.best = float(json.loads(best_file.read_text())["value"])
        if self.best is not None and value <= self.best:
            return saved_at
        self.best = value
        if saved_at != self.step:
            self.save()
        out = self.dir / "best.pt"
        self.plan.consolidate(self.engine, self.manager.latest(), out, weights_meta(self.cfg))
        if self.info.is_main:  # best.json is best.pt's sidecar: the weights' meta (export reads it) + the metric
            sidecar = json.loads(best_file.read_text()) if best_file.is_file() else {}
            sidecar.update({"metric": key, "value": value, "step": self.step, **metrics})
            tmp = best_file.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(sidecar, indent=2))
            tmp.replace(best_file)
        wait_for_rank0(self.cfg.parallel.wait_minutes)
        return self.step

    def _summary(self) -> None:
        """One start-up line: model and size, layout, length, output folder, tracking store."""
        if not self.info.is_main:
            return
        cfg = self.cfg
        params = full_numel(self.engine.module)
        per = self.plan.count_label()
        store = cfg.tracking.uri or f"sqlite:///{Path(cfg.output_dir).resolve() / 'mlflow.db'}"
        tracking = f"MLflow {store} (experiment {cfg.tracking.experiment})" if cfg.tracking.enabled else "MLflow off"
        start = f" from step {self.step}" if self.step else ""
        console.print(
            f"{self._tag} {cfg.model_label}: {params / 1e6:,.3f} M parameters{per} | world {self.info.world_size} = "
            f"{self.plan.describe()}, global batch {cfg.train.global_batch} = micro "
            f"{cfg.train.micro_batch} × accum {self.accum} × dp {self.dp_size} | {self.total_steps} steps{start} | "
            f"{cfg.parallel.precision} | out {self.dir} | {tracking}"
        )

    def _timing(self) -> dict[str, float]:
        """Data wait since the last log line (percent of wall time) and the ETA of the stage (seconds)."""
        now = time.perf_counter()
        since = now - (self._last_log or self._clock)
        wait = 100.0 * self.data_wait / since if since > 0 else 0.0
        advice = data_wait_advice(wait, self.cfg.data.num_workers, self.cfg.data.decode)
        if advice and self._last_log is not None and self.info.is_main and not self._warned_data_wait:
            self._warned_data_wait = True  # not in the first window: it holds the loader's start-up
            log.warning(advice)
        self.data_wait, self._last_log = 0.0, now
        done = self.step - self._start_step
        eta = (now - self._clock) / done * (self.total_steps - self.step) if done else float("nan")
        return {"data_wait_pct": wait, "eta_s": eta}

    def _stage_metrics(self) -> dict[str, float]:
        """The stage's extra metrics of the last step (e.g. clip_loss, mae_loss, logit_scale): mean over micro-batches
        and ranks, as the loss; one collective and one read, on log steps only."""
        names = sorted(self.stage_sums)
        if not names:
            return {}
        sums = _all_reduce(torch.stack([self.stage_sums[k].reshape(()) for k in names]))
        world = dist.get_world_size() if dist.is_initialized() else 1
        return dict(zip(names, (sums / (world * self.accum)).tolist(), strict=True))

    def _periodic_metrics(self) -> dict[str, float]:
        self._bad_reasons = self.loader.error_counts()
        bad = self.plan.data_parallel_sum(sum(self._bad_reasons.values()))  # each data stream counted once
        rate = self.meter.rate()
        return {
            **rate.as_metrics(),
            "peak_mem_gib": peak_memory_gib(self.info.device),
            "skipped_steps": float(self.counters.skipped_steps),
            "bad_records": bad,
            "rollbacks": float(self.counters.rollbacks),
            **self._timing(),
        }

    def _record(self, metrics: dict[str, float]) -> None:
        if not self.info.is_main:
            return
        self.losses.append(metrics["loss"])
        if math.isfinite(metrics["loss"]):
            self.history.append((self.step, metrics["loss"]))
        self.tracker.log_metrics(mlflow_metric_names(metrics), step=self.step)
        path = self.dir / "metrics.jsonl"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(json.dumps({"step": self.step, **metrics}) + "\n")
        except OSError as err:
            raise write_error(path, err) from err

    def _print(self, m: dict[str, float]) -> None:
        if not self.info.is_main:
            return
        parts = [
            f"[bold]{self.cfg.stage}[/] step {self.step}/{self.total_steps}",
            f"loss {m['loss']:.4f}",
            f"lr {m['lr']:.2e}",
        ]
        if "grad_norm" in m:
            parts.append(f"gnorm {m['grad_norm']:.3f}")
        parts += [f"{name} {m[name]:.4f}" for name in sorted(self.stage_sums) if name in m]
        parts += [
            f"{m['images_per_s']:.1f} img/s",
            f"{m['tokens_per_s'] / 1e3:.1f}k tok/s",
            f"{m['tflops_per_device']:.3f} TFLOP/s/dev",
        ]
        mfu = f"MFU {100 * m['mfu']:.1f}% " if "mfu" in m else ""
        parts.append(f"{mfu}(device-peak MFU {100 * m.get('mfu_measured', 0.0):.1f}%)")
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(getattr(self, "_bad_reasons", {}).items()) if v)
        eta = m.get("eta_s", float("nan"))
        eta_text = (
            "–"
            if not math.isfinite(eta)
            else f"{eta / 86400:.1f} d"
            if eta >= 86400
            else time.strftime("%H:%M:%S", time.gmtime(eta))
        )
        parts += [
            f"mem {m['peak_mem_gib']:.2f} GiB",
            f"data wait {m.get('data_wait_pct', 0.0):.0f}%",
            f"ETA {eta_text}",
            f"skipped {int(m['skipped_steps'])}",
            f"bad records {int(m['bad_records'])}" + (f" ({reasons})" if reasons else ""),
        ]
        console.print(" | ".join(parts))

    def _finish(self) -> StageResult:
        out = self.dir / CONSOLIDATED
        final = self.manager.latest()
        self.plan.consolidate(self.engine, final, out, weights_meta(self.cfg))
        wait_for_rank0(self.cfg.parallel.wait_minutes)  # gloo, long timeout: rank 0 may consolidate for long
        status = "FINISHED"
        if self.info.is_main:
            if self.history:
                curve = save_loss_curve(
                    {"loss": self.history},
                    self.dir / "loss_curve.png",
                    title=f"{self.cfg.stage}: {self.cfg.model.name}",
                )
                self.tracker.log_artifact(curve)
            self.tracker.log_artifact(out.with_suffix(".json"))
            console.print(f"{self._tag} done: {self.step} steps, consolidated weights in {out}")
        self.tracker.finish(status)
        self._closed = True
        if self.info.is_main and self.tracker.link():
            console.print(f"{self._tag} MLflow: {self.tracker.link()}")
        self.engine.destroy()
        finite = [x for x in self.losses if math.isfinite(x)]
        return StageResult(
            stage=self.cfg.stage,
            steps=self.step,
            stage_dir=self.dir,
            consolidated=out,
            final_loss=finite[-1] if finite else None,
            skipped_steps=self.counters.skipped_steps,
            rollbacks=self.counters.rollbacks,
            losses=self.losses,
        )


def weights_meta(cfg: RunConfig) -> dict[str, Any]:
    """What ``consolidated.json`` records beside the weights: enough to rebuild the encoder (``maws-scale export``)."""
    spec = cfg.spec
    return {
        "stage": cfg.stage,
        "model": cfg.model.name,
        "img_size": cfg.img_size,
        "patch": spec.patch,
        "pool": cfg.model.pool,
        "fc_norm": cfg.model.fc_norm,
        "width": spec.width,
        "depth": spec.depth,
        "heads": spec.heads,
        "mlp_ratio": spec.mlp_ratio,
    }


def _default_loader(cfg: RunConfig, stage: str, dp_rank: int, dp_size: int):
    from maws_scale.data import build_loader

    return build_loader(cfg, stage=stage, rank=dp_rank, world_size=dp_size, micro_batch=cfg.train.micro_batch)


def train_stage(cfg: RunConfig, info: DistInfo | None = None, **kwargs: Any) -> StageResult:
    """Train ``cfg.stage`` (resuming per ``checkpoint.resume``) and consolidate its final weights."""
    return Trainer(cfg, info, **kwargs).run()
