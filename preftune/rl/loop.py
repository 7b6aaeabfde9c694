"""The online RL loop shared by PPO, REINFORCE, RLOO and GRPO.

Each step: take ``batch_size`` prompts (a deterministic shuffle of the prompt set per epoch), collect a
rollout of ``num_samples`` responses per prompt (:mod:`preftune.rl.experience`), let the algorithm turn it
into advantages, then run ``ppo_epochs`` passes of shuffled minibatches of ``minibatch_size`` responses, one
optimizer step each (plus the PPO-ptx term when ``ptx_coef > 0``). The KL controller is updated with the
measured KL to the reference after every rollout.

Logged every step into ``metrics.jsonl``: reward mean / std, KL to the reference (sum over the response
of log pi - log pi_ref, averaged over responses), entropy, response length, the fraction that ended without
EOS, the loss terms, clip fraction, value loss, explained variance, beta, and generation / training tokens/s.
Every ``sample_every`` steps a few prompts with their responses and rewards go to ``samples.jsonl`` and
``samples.md`` in the run folder.

Exact resume: prompt order, sampling seeds and minibatch shuffles are pure functions of (seed, step), and a
checkpoint holds the trainable weights, the optimizer, the RNG state, the KL controller and the algorithm's
own state (REINFORCE's baseline), so resuming from step s replays s+1, ... as the uninterrupted run does.

Several processes (torchrun / ``accelerate launch``, gloo on CPUs): each step's ``batch_size`` prompts are split
into equal contiguous shares, one per process; each process generates, scores and recomputes log-probs for its
share (a prompt's k samples stay together, so group baselines never cross processes). Statistics over the whole
rollout use every process's share: advantage whitening, REINFORCE's baseline, the KL fed to the adaptive
controller, and the logged metrics. Each minibatch is ``minibatch_size / N`` responses per process; its loss is
normalised by the minibatch's global count of units (tokens, or responses for GRPO's per-response mean) and the
gradients are summed over processes once per optimizer step, so N processes take the update one process takes
on the same rollout. A checkpoint is written once and resumes with any process count dividing the batch.

Precision: :mod:`preftune.train.precision` (fp32 master weights, bf16 autocast on a GPU, fp32 on a CPU), as
every offline trainer; the decision is recorded in the run folder's ``config.yaml``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from preftune.data.formats import prompt_text
from preftune.errors import PreftuneError
from preftune.generation.engine import GenerationEngine, HFEngine, SamplingParams
from preftune.losses import policy as P
from preftune.memory import retain_freed_memory
from preftune.progress import progress
from preftune.rl.experience import Rollout, chunks, collect_rollout, make_reference
from preftune.models.policy import policy_forward, response_mask
from preftune.rewards.base import as_reward_function
from preftune.runs import RunDir, resolve_resume
from preftune.train.loop import adamw, load_checkpoint, make_accelerator, save_checkpoint
from preftune.train.precision import precision_policy, to_master_weights


# the wall-clock metrics of a step (they differ between two runs of the same computation)
TIMING_METRICS = ("gen_tokens_per_s", "train_tokens_per_s", "step_time_s", "samples_per_s", "generate_s",
                  "rollout_forward_s", "train_s")


@dataclass
class OnlineSettings:
    steps: int = 100
    batch_size: int = 8  # prompts per step
    num_samples: int = 1  # responses per prompt (k)
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    ppo_epochs: int = 1
    minibatch_size: int = 8  # responses per optimizer step
    learning_rate: float = 1e-6
    max_grad_norm: float | None = 1.0
    kl_coef: float = 0.05
    adaptive_kl: bool = False
    kl_target: float = 6.0
    kl_horizon: int = 10000
    ptx_coef: float = 0.0
    ptx_batch_size: int = 4
    save_every: int = 0
    sample_every: int = 10
    sample_count: int = 4
    seed: int = 0
    resume: bool | str | None = None
    gen_batch_size: int = 32
    decode_dtype: str = "auto"  # the sampler's weights (generation/fast_decode.py); log-probs are recomputed in full precision
    forward_batch_size: int = 16
    single_pass: bool | None = None  # None: auto (one epoch, one minibatch); False: always recompute in a no-grad pass
    mixed_precision: str = "auto"  # preftune.train.precision: auto = bf16 autocast on a GPU, fp32 on a CPU


class ActorCritic(torch.nn.Module):
    """What the optimizer trains: the policy, and a value head on it or a separate critic (either may be None)."""

    def __init__(self, policy, value_head=None, critic=None):
        super().__init__()
        self.policy = policy
        self.value_head = value_head
        self.critic = critic


class OnlineTrainer:
    """Drives an algorithm (:class:`preftune.rl.ppo.PPO` or :class:`preftune.rl.pg.PolicyGradient`) online."""

    def __init__(self, *, policy, tokenizer, algorithm, reward_fn: Callable, prompts: Sequence, prompt_ids: Sequence[list[int]],
                 settings: OnlineSettings, run: RunDir, ref_model=None, value_head=None, critic=None,
                 ptx_data: Sequence[tuple[list[int], list[int]]] | None = None, engine: GenerationEngine | None = None):
        if len(prompts) == 0:
            raise PreftuneError("online RL needs at least one prompt")
        if algorithm.needs_values and value_head is None and critic is None:
            raise PreftuneError(f"{algorithm.name} needs a value model (a value head or a critic)")
        if settings.ptx_coef > 0 and not ptx_data:
            raise PreftuneError("ptx_coef > 0 needs ptx_data (SFT / pretraining examples)")
        self.s = settings
        # the one precision policy of every trainer: fp32 master weights (AdamW never steps bf16 weights), autocast
        # on a GPU; set up before anything reads the weights (the engine's decode copies, the reference)
        self.precision = precision_policy(settings.mixed_precision, next(policy.parameters()).device)
        if self.precision.autocast == "fp16":
            raise PreftuneError("online RL runs in bf16 autocast or fp32 (mixed_precision bf16 or no), not fp16")
        for part in (policy, value_head, critic):
            if part is not None:
                to_master_weights(part, self.precision)
        self.accelerator = make_accelerator(self.precision.autocast)
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        if self.world > 1:
            per_process = {"batch_size": settings.batch_size, "minibatch_size": settings.minibatch_size,
                           "ptx_batch_size": settings.ptx_batch_size if settings.ptx_coef > 0 else 0}
            for name, value in per_process.items():
                if value % self.world:
                    raise PreftuneError(f"{name} {value} must be a multiple of the {self.world} processes "
                                        "(each takes an equal share)")
        self.policy, self.tok, self.algo = policy, tokenizer, algorithm
        self.reward_fn = as_reward_function(reward_fn)
        self.prompts, self.prompt_ids = list(prompts), [list(p) for p in prompt_ids]
        self.run = run
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.value_head, self.critic = value_head, critic
        self.module = ActorCritic(policy, value_head, critic)
        self.temperature = settings.temperature if settings.temperature > 0 else 1.0
        self.reference = make_reference(policy, ref_model, pad_id=self.pad_id, temperature=self.temperature)
        self.engine = engine or HFEngine(policy, tokenizer, batch_size=settings.gen_batch_size, show_progress=False,
                                        decode_dtype=settings.decode_dtype)
        self.ptx_data = list(ptx_data or [])
        self.kl_ctl = (P.AdaptiveKLController(settings.kl_coef, settings.kl_target, settings.kl_horizon)
                       if settings.adaptive_kl else P.FixedKLController(settings.kl_coef))
        params = [p for p in self.module.parameters() if p.requires_grad]
        if not params:
            raise PreftuneError("the policy has no trainable parameters")
        self.params = params
        self.optimizer = adamw(params, lr=settings.learning_rate, weight_decay=0.0)
        # generation and training alternate with new shapes every step: keep freed memory instead of faulting it
        # back in each step (see preftune/memory.py)
        retain_freed_memory()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)
        self.device = next(policy.parameters()).device
        if self.world > 1 and hasattr(algorithm, "prepare"):
            algorithm.all_reduce = self._all_reduce  # whitening and baselines over the whole rollout
        self._ptx_cursor = 0

    # -- deterministic schedule -----------------------------------------------------------------------
    def prompt_indices(self, step: int) -> list[int]:
        """The prompts of ``step``: consecutive slices of a per-epoch permutation seeded by (seed, epoch)."""
        n, b = len(self.prompts), self.s.batch_size
        out = []
        for pos in range(step * b, step * b + b):
            epoch, i = divmod(pos, n)
            g = torch.Generator().manual_seed(self.s.seed * 1_000_003 + epoch)
            out.append(int(torch.randperm(n, generator=g)[i]))
        return out

    def sampling_params(self, step: int) -> SamplingParams:
        """The step's sampling parameters; each process samples its share with its own seed (rank 0: the seed of a
        one-process run), so the processes' draws are independent rather than the same uniforms on other prompts."""
        s = self.s
        return SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                              stop=tuple(s.stop), seed=s.seed * 1_000_003 + step + self.rank * (1 << 40),
                              do_sample=s.temperature > 0)

    # -- one step -------------------------------------------------------------------------------------
    @property
    def single_pass(self) -> bool:
        """Whether the update is one optimizer step over the whole rollout (one epoch, one minibatch: the usual
        RLOO / GRPO setting). Then the "old" policy *is* the policy being updated: its log-probs (and values) are
        taken, detached, from the training forward itself (still recomputed by the training model, never the
        sampler's), and the separate no-grad pass over the rollout is skipped. The ratio is exactly 1."""
        s = self.s
        auto = s.ppo_epochs == 1 and s.minibatch_size >= s.batch_size * max(s.num_samples, 1)
        return auto if s.single_pass is None else (s.single_pass and auto)

    @property
    def needs_reference(self) -> bool:
        """A reference pass is needed unless the KL coefficient is fixed at 0 (then the KL term is 0 whatever it is)."""
        return self.s.adaptive_kl or self.kl_ctl.value != 0

    def local_prompt_indices(self, step: int) -> list[int]:
        """This process's share of the step's prompts: the ``rank``-th of ``world`` equal contiguous slices."""
        idx = self.prompt_indices(step)
        share = len(idx) // self.world
        return idx[self.rank * share:(self.rank + 1) * share]

    @property
    def local_minibatch(self) -> int:
        return self.s.minibatch_size // self.world

    def _all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of ``x`` over every process (``x`` itself in one process)."""
        if self.world == 1:
            return x
        import torch.distributed as dist

        out = x.detach().clone()
        dist.all_reduce(out)
        return out

    def _sum_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Each metric summed over the processes (every process has the same keys); unchanged in one process."""
        if self.world == 1 or not metrics:
            return metrics
        keys = sorted(metrics)
        total = self._all_reduce(torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64))
        return dict(zip(keys, total.tolist()))

    def _autocast(self):
        return self.accelerator.autocast()

    def rollout(self, step: int, policy_pass: bool = True) -> Rollout:
        idx = self.local_prompt_indices(step)
        self.module.eval()
        with self._autocast():
            return collect_rollout(policy=self.policy, reference=self.reference, engine=self.engine, reward_fn=self.reward_fn,
                               prompts=[self.prompts[i] for i in idx], prompt_ids=[self.prompt_ids[i] for i in idx],
                               params=self.sampling_params(step), k=self.s.num_samples, pad_id=self.pad_id,
                               value_head=self.value_head, critic=self.critic, forward_batch_size=self.s.forward_batch_size,
                               policy_pass=policy_pass, reference_pass=self.needs_reference)

    def _ptx_batch(self) -> tuple[list, list]:
        """This process's share of the next ``ptx_batch_size`` SFT examples (the cursor counts all processes')."""
        n, share = len(self.ptx_data), self.s.ptx_batch_size // self.world
        first = self._ptx_cursor + self.rank * share
        rows = [self.ptx_data[(first + i) % n] for i in range(share)]
        self._ptx_cursor = (self._ptx_cursor + self.s.ptx_batch_size) % n
        return [r[0] for r in rows], [r[1] for r in rows]

    def _global_share(self, units: float) -> float:
        """This process's share of a loss averaged over ``units`` here: units / (the units of every process).
        Multiplying the local mean loss by it and summing gradients over processes gives the global mean's."""
        if self.world == 1:
            return 1.0
        total = float(self._all_reduce(torch.tensor(float(units), dtype=torch.float64)))
        return float(units) / total if total > 0 else 0.0

    def _loss_units(self, rollout: Rollout, idx: torch.Tensor) -> float:
        """What the algorithm's minibatch loss is a mean over: tokens, or responses (GRPO), or its own weights."""
        units = getattr(self.algo, "loss_units", None)
        return float(units(rollout, idx)) if units is not None else float(len(idx))

    def update(self, rollout: Rollout, step: int, kl_coef: float) -> dict[str, float]:
        """``ppo_epochs`` passes of shuffled minibatches over the rollout; returns the means of the loss metrics."""
        s = self.s
        b = len(rollout.sequences)
        sums: dict[str, float] = {}
        count, tokens = 0, 0
        self.module.eval()  # no dropout: the ratio must be exactly 1 before the first update
        # an algorithm that trains on groups (online DPO's pairs) has whole groups shuffled and kept together
        group = getattr(self.algo, "keeps_groups", 1)
        if group > 1 and self.local_minibatch % group:
            raise PreftuneError(f"{self.algo.name}: minibatch_size {s.minibatch_size} must be a multiple of {group}"
                                + (f" × {self.world} processes" if self.world > 1 else ""))
        for epoch in range(s.ppo_epochs):
            g = torch.Generator().manual_seed(s.seed * 7_919 + step * 101 + epoch)
            if group > 1:
                perm = (torch.randperm(b // group, generator=g)[:, None] * group + torch.arange(group)[None, :]).flatten()
            else:
                perm = torch.randperm(b, generator=g)
            for r in chunks(b, self.local_minibatch):
                idx = perm[list(r)]
                rows = idx.tolist()
                p = [rollout.prompt_ids[i] for i in rows]
                q = [rollout.sequences[i] for i in rows]
                with self._autocast():
                    fwd = policy_forward(self.policy, p, q, pad_id=self.pad_id, temperature=self.temperature,
                                         value_head=self.value_head, critic=self.critic)
                    loss, metrics = self.algo.loss(fwd, rollout, idx, kl_coef)
                share = self._global_share(self._loss_units(rollout, idx))
                if share != 1.0:
                    loss = loss * share
                tokens += sum(len(x) + len(y) for x, y in zip(p, q)) + self._optimizer_step(loss, metrics)
                for k, v in metrics.items():  # weighted by the share: summed over processes, the global means
                    sums[k] = sums.get(k, 0.0) + v * share
                count += 1
        out = {k: v / max(count, 1) for k, v in self._sum_metrics(sums).items()}
        out["_train_tokens"] = tokens
        return out

    def _optimizer_step(self, loss: torch.Tensor, metrics: dict) -> int:
        """Add the PPO-ptx term when asked, backward, clip, step. Returns the ptx tokens processed."""
        s, tokens = self.s, 0
        if s.ptx_coef > 0:
            pp, pc = self._ptx_batch()
            with self._autocast():
                lp = policy_forward(self.policy, pp, pc, pad_id=self.pad_id).logprobs
                ptx_mask = response_mask(pc, lp.device)
                ptx = P.ptx_loss(lp, ptx_mask, s.ptx_coef)
            share = self._global_share(float(ptx_mask.sum()))
            loss = loss + (ptx * share if share != 1.0 else ptx)
            metrics["ptx_loss"] = float(ptx.detach())
            tokens += sum(len(x) + len(y) for x, y in zip(pp, pc))
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        if self.world > 1:
            self._sum_gradients()
        if s.max_grad_norm:
            metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, s.max_grad_norm))
        self.optimizer.step()
        self._policy_updated()
        return tokens

    def _sum_gradients(self) -> None:
        """Sum every trainable parameter's gradient over the processes (one all-reduce of one flat buffer); the
        losses were already scaled by each process's share of the global count, so the sum is the global mean's."""
        import torch.distributed as dist

        grads = []
        for p in self.params:
            if p.grad is None:  # unused here (a head another process used): zeros keep the buffers aligned
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def _policy_updated(self) -> None:
        """Tell the generation engine the weights changed (its bf16 copies, or vLLM's weights, are now stale)."""
        hook = getattr(self.engine, "on_policy_update", None)
        if hook is not None:
            hook(self.policy)

    def update_single_pass(self, rollout: Rollout, kl_coef: float) -> tuple[dict[str, float], dict[str, float]]:
        """One forward with grad over the whole rollout: its detached log-probs / values become the rollout's "old"
        ones, the algorithm prepares advantages from them, and the same graph gives the loss (see :attr:`single_pass`).
        Returns (the algorithm's prepare metrics, the update metrics)."""
        self.module.eval()  # no dropout, as in update()
        b = len(rollout.sequences)
        with self._autocast():
            fwd = policy_forward(self.policy, rollout.prompt_ids, rollout.sequences, pad_id=self.pad_id,
                                 temperature=self.temperature, value_head=self.value_head, critic=self.critic,
                                 with_entropy=True)
        width = rollout.mask.shape[1]
        rollout.logprobs = fwd.logprobs.detach()[:, :width].cpu()
        rollout.entropy = fwd.entropy[:, :width].cpu()
        if fwd.values is not None:
            rollout.values = fwd.values.detach()[:, :width].cpu()
        if rollout.ref_logprobs is None:  # KL coefficient 0: the KL terms vanish whatever pi_ref is; pi itself (KL 0)
            rollout.ref_logprobs = rollout.logprobs
        prep = self.algo.prepare(rollout, kl_coef)
        with self._autocast():
            loss, metrics = self.algo.loss(fwd, rollout, torch.arange(b), kl_coef)
        share = self._global_share(self._loss_units(rollout, torch.arange(b)))
        if share != 1.0:
            loss = loss * share
        tokens = sum(len(x) + len(y) for x, y in zip(rollout.prompt_ids, rollout.sequences))
        tokens += self._optimizer_step(loss, metrics)
        metrics = self._sum_metrics({k: v * share for k, v in metrics.items()})
        metrics["_train_tokens"] = tokens
        return prep, metrics

    # -- the loop -------------------------------------------------------------------------------------
    def train(self) -> dict[str, float]:
        s = self.s
        torch.manual_seed(s.seed)
        start = 0
        checkpoint = resolve_resume(self.run, s.resume)
        if self.accelerator.is_main_process:
            self.run.record("precision", self.precision.record())
        if checkpoint is not None:
            # the schedule is a function of (seed, step) and the global batch: any process count resumes it
            start = load_checkpoint(checkpoint, self.module, self.optimizer, self.scheduler, self.accelerator,
                                    any_process_count=True)
            self._policy_updated()
            state = json.loads((checkpoint / "state.json").read_text())
            self.kl_ctl.load_state_dict(state["kl_controller"])
            if hasattr(self.algo, "load_state_dict"):
                self.algo.load_state_dict(state.get("algorithm", {}))
            self._ptx_cursor = state.get("ptx_cursor", 0)
            if start >= s.steps:
                raise PreftuneError(f"--resume: {checkpoint} is at step {start}, the run has only {s.steps} steps")
        self.run.truncate_metrics(start)
        last: dict[str, float] = {}
        main = self.accelerator.is_main_process
        bar = progress(total=s.steps, initial=start, desc=f"{self.algo.name}") if main else None
        for step in range(start, s.steps):
            last = self.step(step)
            self.run.log(step + 1, last)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(reward=f"{last['reward_mean']:.3f}", kl=f"{last.get('kl', float('nan')):.3f}")
            if s.sample_every and (step + 1) % s.sample_every == 0 and main:
                self._write_samples(step + 1)
            if s.save_every and (step + 1) % s.save_every == 0 and step + 1 < s.steps:
                extra = {"kl_controller": self.kl_ctl.state_dict(), "ptx_cursor": self._ptx_cursor,
                         "algorithm": self.algo.state_dict() if hasattr(self.algo, "state_dict") else {}}
                save_checkpoint(self.run, step + 1, self.module, self.optimizer, self.scheduler, self.accelerator, extra)
        if bar is not None:
            bar.close()
        self.accelerator.wait_for_everyone()
        return last

    def step(self, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        single = self.single_pass
        rollout = self.rollout(step, policy_pass=not single)
        self._last_rollout = rollout
        kl_coef = self.kl_ctl.value
        measured = rollout.ref_logprobs is not None
        t1 = time.perf_counter()
        if single:
            prep, upd = self.update_single_pass(rollout, kl_coef)
        else:
            if not measured:
                rollout.ref_logprobs = rollout.logprobs
            prep = self.algo.prepare(rollout, kl_coef)
            t1 = time.perf_counter()
            upd = self.update(rollout, step, kl_coef)
        t_train = time.perf_counter() - t1
        mask = rollout.mask
        kl_seq = P.masked_sum(rollout.logprobs - rollout.ref_logprobs, mask, dim=-1)
        lengths = mask.sum(-1).float()
        timings = rollout.timings
        train_tokens = upd.pop("_train_tokens")
        scores, finished = rollout.scores, rollout.finished.float()
        entropy_sum, token_count = P.masked_sum(rollout.entropy, mask), mask.sum()
        if self.world > 1:  # per response: every process's, in rank order; per token: sums over processes
            scores, kl_seq, lengths, finished = (self.accelerator.gather(x.contiguous()) for x in (scores, kl_seq, lengths, finished))
            entropy_sum, token_count = self._all_reduce(entropy_sum), self._all_reduce(token_count)
            prep = self._sum_metrics({k: v * float(mask.sum()) for k, v in prep.items()})
            prep = {k: v / float(token_count) for k, v in prep.items()}  # token-weighted means over processes
            train_tokens = int(self._sum_metrics({"t": float(train_tokens)})["t"])
            timings = {**timings, "generated_tokens": int(self._sum_metrics({"g": timings["generated_tokens"]})["g"])}
        kl = float(kl_seq.mean())
        self.kl_ctl.update(kl, len(kl_seq))
        metrics = {
            "reward_mean": float(scores.mean()),
            "reward_std": float(scores.std()) if len(scores) > 1 else 0.0,
            **({"kl": kl} if measured else {}),  # not measured when beta = 0 (no reference pass)
            "kl_coef": kl_coef,
            "entropy": float(entropy_sum / token_count.clamp(min=1)),
            "response_length": float(lengths.mean()),
            "no_eos_frac": float((1 - finished).mean()),
            **prep,
            **upd,
            "gen_tokens_per_s": timings["generated_tokens"] / max(timings["generate_s"], 1e-9),
            "generate_s": timings["generate_s"],
            "rollout_forward_s": timings["forward_s"],
            "train_s": t_train,
            "train_tokens_per_s": train_tokens / max(t_train, 1e-9),
            "step_time_s": time.perf_counter() - t0,
        }
        metrics["samples_per_s"] = len(scores) / metrics["step_time_s"]
        if rollout.sampler_logprobs is not None:
            # how far the sampler's log-probs (bf16 decode weights by default on CPU) are from the trainer's
            sampled = torch.zeros_like(rollout.logprobs)
            for i, lps in enumerate(rollout.sampler_logprobs):
                sampled[i, : len(lps)] = torch.tensor(lps, dtype=sampled.dtype)
            gap = P.masked_sum((sampled - rollout.logprobs).abs(), mask)
            metrics["sampler_logprob_gap"] = float(self._all_reduce(gap) / token_count.clamp(min=1))
        return metrics

    def _write_samples(self, step: int) -> None:
        r = getattr(self, "_last_rollout", None)
        if r is None:
            return
        k = max(self.s.num_samples, 1)
        picks = list(range(0, len(r.texts), k))[: self.s.sample_count]  # the first sample of each prompt
        rows = [{"step": step, "prompt": prompt_text(r.prompts[i]), "response": r.texts[i], "reward": float(r.scores[i])}
                for i in picks]
        with (self.run.path / "samples.jsonl").open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")

        def cell(text: str) -> str:
            return text.replace("|", "\\|").replace("\n", "<br>")

        with (self.run.path / "samples.md").open("a") as f:
            f.write(f"\n### step {step}\n\n| prompt | response | reward |\n|---|---|---|\n")
            for row in rows:
                f.write(f"| {cell(row['prompt'])} | {cell(row['response'])} | {row['reward']:.4f} |\n")
