"""The one training loop every offline method shares (SFT, the DPO family, reward models).

A method plugs in two things:

* ``collate(items) -> batch``: a list of dataset items → one micro-batch (anything with ``.to(device)``, or a dict
  of such values);
* a :class:`Step`: ``step.weight(batch)`` (how many units the batch's loss sums over: pairs, tokens, ...) and
  ``step(model, batch) -> StepOutput`` (the summed loss and per-batch metrics).

The loop owns the rest, on accelerate: device placement, mixed precision (bf16 autocast on CUDA), multi-process
data parallelism, gradient accumulation, clipping, AdamW + a warm-up/decay schedule, per-step metrics into the run
folder, a progress bar, checkpoints every ``save_every`` steps and exact resume.

**Exact gradient accumulation.** The loss of an optimizer step is ``Σ_micro-batches loss_sum / W`` with ``W`` the
total weight of the whole window (all micro-batches, all processes), so k micro-batches give the same update as one
batch k times larger, whatever their sizes or token counts.

**Exact resume.** The data order is a pure function of (seed, epoch), so the data position is just the step number.
A checkpoint holds the trainable weights (bit-exact fp32 safetensors), the optimizer and scheduler states, every RNG
state (python, numpy, torch, CUDA; one file per process) and the step; resuming from step s replays steps s+1, …
exactly as an uninterrupted run, and metrics.jsonl is truncated to step s first.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from preftune.distributed import world_size
from preftune.errors import PreftuneError
from preftune.progress import progress
from preftune.runs import RunDir
from preftune.train.precision import precision_policy, to_master_weights

# -- the seam a method plugs into ----------------------------------------------------------------------


@dataclass
class StepOutput:
    """What a step gives the loop for one micro-batch.

    ``loss``: 0-d, the SUM of the per-unit losses of the micro-batch (the loop divides by the window's total weight);
    ``metrics``: means over the micro-batch (averaged over micro-batches weighted by ``Step.weight``);
    ``tokens``: tokens the forward passes processed (for tokens/s).
    """

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    tokens: int = 0


class Step(Protocol):
    def weight(self, batch: Any) -> float:
        """How many units (pairs, tokens, examples) ``loss`` sums over; known before the forward pass."""

    def __call__(self, model: torch.nn.Module, batch: Any) -> StepOutput:
        """Forward pass(es) and loss of one micro-batch."""


@dataclass
class LoopSettings:
    """The loop's knobs (the commands' configs map onto these)."""

    batch_size: int = 4  # items per micro-batch per process
    grad_accum: int = 1
    max_steps: int | None = None  # None: num_epochs over the data
    num_epochs: float = 1.0
    learning_rate: float = 5e-7
    lr_scheduler: str = "linear"  # linear | cosine | constant
    warmup: float = 0.0  # < 1: a fraction of the steps; ≥ 1: a number of steps
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    save_every: int = 0  # 0: only the final model
    keep_checkpoints: int | None = None  # keep the newest N checkpoints (None: all)
    seed: int = 42
    shuffle: bool = True
    mixed_precision: str = "auto"  # preftune.train.precision: auto (bf16 autocast on CUDA, fp32 on CPU) | no | bf16 | fp16
    resume: bool | str | None = None
    log_every: int = 1


# -- data order: a pure function of (seed, epoch) ---------------------------------------------------------


@dataclass(frozen=True)
class DataPlan:
    """Which dataset indices each (step, process) trains on."""

    n: int
    batch_size: int
    grad_accum: int
    num_processes: int
    seed: int
    shuffle: bool
    lengths: Sequence[int] | None = None  # when given, each step's examples are sorted by length before splitting

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.num_processes

    @property
    def steps_per_epoch(self) -> int:
        if self.num_processes > 1:  # every process needs the same number of micro-batches: drop the ragged tail
            return self.n // self.global_batch
        return math.ceil(self.n / self.global_batch)

    def epoch_order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def micro_batches(self, step: int, process: int = 0) -> list[list[int]]:
        """The index lists of the micro-batches process ``process`` runs at optimizer step ``step`` (0-based)."""
        epoch, b = divmod(step, self.steps_per_epoch)
        chunk = self.epoch_order(epoch)[b * self.global_batch:(b + 1) * self.global_batch]
        if self.lengths is not None:
            chunk = sorted(chunk, key=lambda i: self.lengths[i])
        pieces = [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        return pieces[process::self.num_processes]

    def indices(self, steps: range, process: int = 0) -> list[int]:
        """Every index process ``process`` visits over ``steps`` (sorted, unique)."""
        return sorted({i for s in steps for mb in self.micro_batches(s, process) for i in mb})


def total_steps(settings: LoopSettings, plan: DataPlan) -> int:
    if plan.steps_per_epoch == 0:
        raise PreftuneError(f"{plan.n} examples are fewer than one global batch of {plan.global_batch} "
                            f"(batch_size × grad_accum × processes); lower batch_size or grad_accum")
    if settings.max_steps is not None:
        return settings.max_steps
    return max(1, math.ceil(settings.num_epochs * plan.steps_per_epoch))


# -- learning-rate schedule -----------------------------------------------------------------------------


def warmup_steps(warmup: float, total: int) -> int:
    return int(warmup) if warmup >= 1 else math.ceil(warmup * total)


def lr_factor(step: int, *, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak learning rate before optimizer step ``step`` (0-based): linear warm-up over ``warmup``
    steps, then constant, linear decay to 0, or cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress_ = (step - warmup) / max(1, total - warmup)
    if kind == "constant":
        return 1.0
    if kind == "linear":
        return max(0.0, 1.0 - progress_)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))
    raise PreftuneError(f"unknown lr_scheduler '{kind}' (choose from linear, cosine, constant)")


# -- DDP-safe forward -----------------------------------------------------------------------------------


class StepModule(torch.nn.Module):
    """Runs ``step(model, batch)`` as its forward, so a DistributedDataParallel wrapper around it sees the forward
    (the log-prob helpers call the decoder and LM head directly, which would bypass DDP's hooks on the bare model)."""

    def __init__(self, model: torch.nn.Module, step: Step):
        super().__init__()
        self.model = model
        self._step = [step]  # a list, so the step (and any reference model it holds) is not a submodule

    def forward(self, batch):
        return self._step[0](self.model, batch)


def _to(batch, device):
    if hasattr(batch, "to"):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


# Metrics that count things: an optimizer step's value is their sum over micro-batches and processes (a mean would
# change with the micro-batch size and the process count). Every other metric is a weighted mean.
SUMMED_METRICS = frozenset({"completion_tokens"})


def _weighted_mean(rows: list[tuple[float, dict[str, float]]]) -> dict[str, float]:
    """Merge micro-batches' (or processes') metrics: weighted means, except counts (:data:`SUMMED_METRICS`), summed."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for w, metrics in rows:
        for k, v in metrics.items():
            summed = k in SUMMED_METRICS
            sums[k] = sums.get(k, 0.0) + (v if summed else w * v)
            weights[k] = weights.get(k, 0.0) + (1.0 if summed else w)
    return {k: sums[k] if k in SUMMED_METRICS else sums[k] / weights[k] for k in sums if weights[k] > 0}


def accumulate(module: torch.nn.Module, step: Step, batches: list,
               accelerator) -> tuple[float, dict[str, float], int, float]:
    """Forward and backward over one optimizer step's micro-batches with the exact global normalisation.

    Returns (this process's share of the window's mean loss: its loss sum over the global weight, its metrics merged
    by weight, its tokens, its weight). Gradients are left in the parameters' ``.grad``; DDP gradient sync happens
    only on the last micro-batch.
    """
    weights = [float(step.weight(b)) for b in batches]
    local = torch.tensor(sum(weights), dtype=torch.float64, device=accelerator.device)
    total = accelerator.reduce(local, reduction="sum").item() if accelerator.num_processes > 1 else local.item()
    if total <= 0:
        raise PreftuneError("an optimizer step has no training units (empty batches?)")
    scale = accelerator.num_processes / total  # DDP averages gradients over processes; undo that
    loss_sum, rows, tokens = 0.0, [], 0
    for j, batch in enumerate(batches):
        last = j == len(batches) - 1
        sync = contextlib.nullcontext() if last or accelerator.num_processes == 1 else accelerator.no_sync(module)
        with sync, accelerator.autocast():
            out: StepOutput = module(_to(batch, accelerator.device))
            accelerator.backward(out.loss * scale)
        loss_sum += out.loss.detach().float().item()
        rows.append((weights[j], out.metrics))
        tokens += out.tokens
    return loss_sum / total, _weighted_mean(rows), tokens, sum(weights)


# -- checkpoints ----------------------------------------------------------------------------------------


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run: RunDir, step: int, model, optimizer, scheduler, accelerator, extra: dict | None = None) -> Path:
    """``checkpoints/step-N/``: trainable.safetensors, optimizer.pt, scheduler.pt, rng-<process>.pt, state.json, COMPLETE."""
    from safetensors.torch import save_file

    path = run.checkpoint_dir(step)
    if accelerator.is_main_process:
        path.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), path / f"rng-{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        save_file(trainable_state(accelerator.unwrap_model(model)), str(path / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), path / "optimizer.pt")
        torch.save(scheduler.state_dict(), path / "scheduler.pt")
        (path / "state.json").write_text(json.dumps({"step": step, "num_processes": accelerator.num_processes, **(extra or {})}))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (path / "COMPLETE").write_text("")
    return path


def load_checkpoint(path: Path, model, optimizer, scheduler, accelerator, *, any_process_count: bool = False) -> int:
    """Load a checkpoint of :func:`save_checkpoint`; returns its step. ``any_process_count``: the caller's data
    schedule does not depend on the process count, so a checkpoint of N processes may resume with M (each process
    takes its own RNG state where the checkpoint has one, else the main process's)."""
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    if state.get("num_processes", 1) != accelerator.num_processes and not any_process_count:
        raise PreftuneError(f"--resume: {path} was written by {state['num_processes']} processes, this run has "
                            f"{accelerator.num_processes}; resume with the same number of processes")
    weights = load_file(str(path / "trainable.safetensors"))
    target = accelerator.unwrap_model(model)
    params = dict(target.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise PreftuneError(f"--resume: {path} does not match this model (no weights for {missing[0]}, ...)")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = path / f"rng-{accelerator.process_index}.pt"
    _set_rng_state(torch.load(rng if rng.exists() else path / "rng-0.pt", weights_only=False))
    return int(state["step"])


def _prune(run: RunDir, keep: int | None) -> None:
    if keep is None:
        return
    for _, p in run.checkpoints()[:-keep] if keep > 0 else run.checkpoints():
        shutil.rmtree(p, ignore_errors=True)


# -- the loop -------------------------------------------------------------------------------------------


def adamw(params: list[torch.nn.Parameter], **kwargs) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` with the fused kernel where every parameter allows it (CPU or CUDA, floating point).

    The fused step is one pass over each tensor instead of ~10 elementwise ops: 0.06 s against 0.4 s for the
    135M parameters of the default model on 2 CPU cores. transformers' ``Trainer`` (so TRL) defaults to it too
    (``adamw_torch_fused``). Anything else falls back to the default implementation.
    """
    fusable = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, **kwargs, **({"fused": True} if fusable else {}))


def make_accelerator(mixed_precision: str = "auto"):
    """An ``Accelerator`` with ``mixed_precision`` ("auto": :func:`preftune.train.precision.precision_policy`'s).

    accelerate's state is process-wide and refuses a second, different mixed-precision setting ("AcceleratorState
    has already been initialized"). Several runs in one process (the demo, a notebook: a reward model, then PPO,
    then DPO) each ask for their own, so a state set up with another setting is reset first, as transformers'
    ``TrainingArguments`` resets it for every trainer.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if mixed_precision == "auto":
        mixed_precision = precision_policy("auto").autocast
    world = world_size()
    shared = AcceleratorState._shared_state
    previous = shared.get("_mixed_precision")
    if (previous is not None and previous != mixed_precision) or (shared and shared.get("num_processes", world) != world):
        # another setting, or a state inherited over fork from a parent with another process count
        AcceleratorState._reset_state(reset_partial_state=True)
    # without an accelerator device, accelerate sets up gloo on CPUs only when asked (`accelerate launch --cpu`);
    # under plain torchrun it would otherwise run N independent single-process trainings
    cpu = world > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=cpu)
    if accelerator.num_processes != world:
        raise PreftuneError(f"launched as {world} processes (WORLD_SIZE), but accelerate set up "
                            f"{accelerator.num_processes}; check the launcher's environment")
    return accelerator


@dataclass
class TrainResult:
    steps: int
    last_metrics: dict[str, float]
    model: torch.nn.Module  # the unwrapped trained model
    accelerator: Any


def train(model: torch.nn.Module, dataset: Sequence, collate: Callable[[list], Any], step: Step,
          settings: LoopSettings, run: RunDir, *, lengths: Sequence[int] | None = None,
          setup: Callable[[Any, DataPlan, range], None] | None = None, accelerator=None,
          desc: str = "training") -> TrainResult:
    """Train ``model`` on ``dataset`` with ``step``; see the module docstring.

    ``lengths`` (one per item) turns on length-grouped micro-batches (less padding; the optimizer step sees the same
    examples either way). ``setup(accelerator, plan, steps)`` runs once before the first step (a DPO step uses it to
    compute reference log-probs for exactly the examples the run will visit).
    """
    from preftune.runs import resolve_resume

    precision = precision_policy(settings.mixed_precision)  # for accelerate's device (it places the model there)
    to_master_weights(model, precision)  # AdamW steps fp32 weights, whatever dtype the model was loaded in
    accelerator = accelerator or make_accelerator(precision.autocast)
    if accelerator.is_main_process:
        run.record("precision", precision.record())
    # seeds per process (dropout draws differ between processes; process 0 draws as a one-process run does); the
    # data order has its own generator, a function of (seed, epoch) only
    torch.manual_seed(settings.seed + accelerator.process_index)
    random.seed(settings.seed + accelerator.process_index)
    np.random.seed(settings.seed + accelerator.process_index)
    plan = DataPlan(len(dataset), settings.batch_size, settings.grad_accum, accelerator.num_processes,
                    settings.seed, settings.shuffle, lengths)
    n_steps = total_steps(settings, plan)

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise PreftuneError("the model has no trainable parameters")
    optimizer = adamw(params, lr=settings.learning_rate, betas=settings.adam_betas, eps=settings.adam_eps,
                      weight_decay=settings.weight_decay)
    warm = warmup_steps(settings.warmup, n_steps)
    lr_factor(0, total=n_steps, warmup=warm, kind=settings.lr_scheduler)  # validates the scheduler name early
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total=n_steps, warmup=warm, kind=settings.lr_scheduler))
    module, optimizer = accelerator.prepare(StepModule(model, step), optimizer)

    checkpoint = resolve_resume(run, settings.resume)
    start = int(json.loads((checkpoint / "state.json").read_text())["step"]) if checkpoint is not None else 0
    if start >= n_steps:
        raise PreftuneError(f"--resume: {checkpoint} is at step {start}, the run has only {n_steps} steps")
    if setup is not None:  # before the checkpoint's weights are loaded: the model still has its initial weights
        setup(accelerator, plan, range(start, n_steps))
    if checkpoint is not None:
        saved = json.loads((checkpoint / "state.json").read_text())
        # the data order is a function of (seed, global batch, steps per epoch): another process count with the
        # same global batch replays the same examples at the same steps
        same_plan = (saved.get("global_batch"), saved.get("steps_per_epoch")) == (plan.global_batch, plan.steps_per_epoch)
        if saved.get("num_processes", 1) != accelerator.num_processes and not same_plan:
            raise PreftuneError(
                f"--resume: {checkpoint} was written by {saved.get('num_processes', 1)} processes with a global batch "
                f"of {saved.get('global_batch', '?')} ({saved.get('steps_per_epoch', '?')} steps an epoch); this run "
                f"has {accelerator.num_processes} with {plan.global_batch} ({plan.steps_per_epoch} steps an epoch): resume with "
                "batch_size × grad_accum × processes equal to the checkpoint's")
        load_checkpoint(checkpoint, module, optimizer, scheduler, accelerator, any_process_count=same_plan)
    if accelerator.is_main_process:
        run.truncate_metrics(start)

    module.train()
    last: dict[str, float] = {}
    bar = progress(total=n_steps, initial=start, desc=desc) if accelerator.is_main_process else None
    rank = accelerator.process_index
    for s in range(start, n_steps):
        t0 = time.perf_counter()
        batches = [collate([dataset[i] for i in idx]) for idx in plan.micro_batches(s, rank)]
        loss, metrics, tokens, weight = accumulate(module, step, batches, accelerator)
        if settings.max_grad_norm:
            grad_norm = accelerator.clip_grad_norm_(params, settings.max_grad_norm)
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - t0
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            gathered = gather_object([(loss, metrics, tokens, weight)])
            loss = sum(g[0] for g in gathered)  # each process's share of the global mean
            metrics = _weighted_mean([(g[3], g[1]) for g in gathered])  # as one process would merge the micro-batches
            tokens = sum(g[2] for g in gathered)
        last = {"loss": loss, **metrics, "grad_norm": float(grad_norm), "learning_rate": lr,
                "tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0, "epoch": (s + 1) / plan.steps_per_epoch}
        if accelerator.is_main_process:
            if (s + 1) % settings.log_every == 0 or s + 1 == n_steps:
                run.log(s + 1, last)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
        if settings.save_every and (s + 1) % settings.save_every == 0 and s + 1 < n_steps:
            save_checkpoint(run, s + 1, module, optimizer, scheduler, accelerator,
                            {"global_batch": plan.global_batch, "steps_per_epoch": plan.steps_per_epoch})
            if accelerator.is_main_process:
                _prune(run, settings.keep_checkpoints)
    if bar is not None:
        bar.close()
    accelerator.wait_for_everyone()
    return TrainResult(n_steps, last, accelerator.unwrap_model(module).model, accelerator)
