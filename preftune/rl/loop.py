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
from preftune.rl.experience import Rollout, chunks, collect_rollout, make_reference, policy_forward, response_mask
from preftune.rewards.base import as_reward_function
from preftune.runs import RunDir, resolve_resume
from preftune.train.loop import adamw, load_checkpoint, make_accelerator, save_checkpoint


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
        self.accelerator = make_accelerator("no")
        self.device = next(policy.parameters()).device
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
        s = self.s
        return SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                              stop=tuple(s.stop), seed=s.seed * 1_000_003 + step, do_sample=s.temperature > 0)

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

    def rollout(self, step: int, policy_pass: bool = True) -> Rollout:
        idx = self.prompt_indices(step)
        self.module.eval()
        return collect_rollout(policy=self.policy, reference=self.reference, engine=self.engine, reward_fn=self.reward_fn,
                               prompts=[self.prompts[i] for i in idx], prompt_ids=[self.prompt_ids[i] for i in idx],
                               params=self.sampling_params(step), k=self.s.num_samples, pad_id=self.pad_id,
                               value_head=self.value_head, critic=self.critic, forward_batch_size=self.s.forward_batch_size,
                               policy_pass=policy_pass, reference_pass=self.needs_reference)

    def _ptx_batch(self) -> tuple[list, list]:
        n = len(self.ptx_data)
        rows = [self.ptx_data[(self._ptx_cursor + i) % n] for i in range(self.s.ptx_batch_size)]
        self._ptx_cursor = (self._ptx_cursor + self.s.ptx_batch_size) % n
        return [r[0] for r in rows], [r[1] for r in rows]

    def update(self, rollout: Rollout, step: int, kl_coef: float) -> dict[str, float]:
        """``ppo_epochs`` passes of shuffled minibatches over the rollout; returns the means of the loss metrics."""
        s = self.s
        b = len(rollout.sequences)
        sums: dict[str, float] = {}
        count, tokens = 0, 0
        self.module.eval()  # no dropout: the ratio must be exactly 1 before the first update
        # an algorithm that trains on groups (online DPO's pairs) has whole groups shuffled and kept together
        group = getattr(self.algo, "keeps_groups", 1)
        if group > 1 and s.minibatch_size % group:
            raise PreftuneError(f"{self.algo.name}: minibatch_size {s.minibatch_size} must be a multiple of {group}")
        for epoch in range(s.ppo_epochs):
            g = torch.Generator().manual_seed(s.seed * 7_919 + step * 101 + epoch)
            if group > 1:
                perm = (torch.randperm(b // group, generator=g)[:, None] * group + torch.arange(group)[None, :]).flatten()
            else:
                perm = torch.randperm(b, generator=g)
            for r in chunks(b, s.minibatch_size):
                idx = perm[list(r)]
                rows = idx.tolist()
                p = [rollout.prompt_ids[i] for i in rows]
                q = [rollout.sequences[i] for i in rows]
                fwd = policy_forward(self.policy, p, q, pad_id=self.pad_id, temperature=self.temperature,
                                     value_head=self.value_head, critic=self.critic)
                loss, metrics = self.algo.loss(fwd, rollout, idx, kl_coef)
                tokens += sum(len(x) + len(y) for x, y in zip(p, q)) + self._optimizer_step(loss, metrics)
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
        out = {k: v / max(count, 1) for k, v in sums.items()}
        out["_train_tokens"] = tokens
        return out

    def _optimizer_step(self, loss: torch.Tensor, metrics: dict) -> int:
        """Add the PPO-ptx term when asked, backward, clip, step. Returns the ptx tokens processed."""
        s, tokens = self.s, 0
        if s.ptx_coef > 0:
            pp, pc = self._ptx_batch()
            lp = policy_forward(self.policy, pp, pc, pad_id=self.pad_id).logprobs
            ptx = P.ptx_loss(lp, response_mask(pc, lp.device), s.ptx_coef)
            loss = loss + ptx
            metrics["ptx_loss"] = float(ptx.detach())
            tokens += sum(len(x) + len(y) for x, y in zip(pp, pc))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if s.max_grad_norm:
            metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, s.max_grad_norm))
        self.optimizer.step()
        self._policy_updated()
        return tokens

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
        loss, metrics = self.algo.loss(fwd, rollout, torch.arange(b), kl_coef)
        tokens = sum(len(x) + len(y) for x, y in zip(rollout.prompt_ids, rollout.sequences))
        metrics["_train_tokens"] = tokens + self._optimizer_step(loss, metrics)
        return prep, metrics

    # -- the loop -------------------------------------------------------------------------------------
    def train(self) -> dict[str, float]:
        s = self.s
        torch.manual_seed(s.seed)
        start = 0
        checkpoint = resolve_resume(self.run, s.resume)
        if checkpoint is not None:
            start = load_checkpoint(checkpoint, self.module, self.optimizer, self.scheduler, self.accelerator)
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
        bar = progress(total=s.steps, initial=start, desc=f"{self.algo.name}")
        for step in range(start, s.steps):
            last = self.step(step)
            self.run.log(step + 1, last)
            bar.update(1)
            bar.set_postfix(reward=f"{last['reward_mean']:.3f}", kl=f"{last.get('kl', float('nan')):.3f}")
            if s.sample_every and (step + 1) % s.sample_every == 0:
                self._write_samples(step + 1)
            if s.save_every and (step + 1) % s.save_every == 0 and step + 1 < s.steps:
                extra = {"kl_controller": self.kl_ctl.state_dict(), "ptx_cursor": self._ptx_cursor,
                         "algorithm": self.algo.state_dict() if hasattr(self.algo, "state_dict") else {}}
                save_checkpoint(self.run, step + 1, self.module, self.optimizer, self.scheduler, self.accelerator, extra)
        bar.close()
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
        kl = float(kl_seq.mean())
        self.kl_ctl.update(kl, len(rollout.sequences))
        lengths = mask.sum(-1).float()
        timings = rollout.timings
        train_tokens = upd.pop("_train_tokens")
        metrics = {
            "reward_mean": float(rollout.scores.mean()),
            "reward_std": float(rollout.scores.std()) if len(rollout.scores) > 1 else 0.0,
            **({"kl": kl} if measured else {}),  # not measured when beta = 0 (no reference pass)
            "kl_coef": kl_coef,
            "entropy": float(P.masked_mean(rollout.entropy, mask)),
            "response_length": float(lengths.mean()),
            "no_eos_frac": float((~rollout.finished).float().mean()),
            **prep,
            **upd,
            "gen_tokens_per_s": timings["generated_tokens"] / max(timings["generate_s"], 1e-9),
            "generate_s": timings["generate_s"],
            "rollout_forward_s": timings["forward_s"],
            "train_s": t_train,
            "train_tokens_per_s": train_tokens / max(t_train, 1e-9),
            "step_time_s": time.perf_counter() - t0,
        }
        metrics["samples_per_s"] = len(rollout.sequences) / metrics["step_time_s"]
        if rollout.sampler_logprobs is not None:
            # how far the sampler's log-probs (bf16 decode weights by default on CPU) are from the trainer's
            sampled = torch.zeros_like(rollout.logprobs)
            for i, lps in enumerate(rollout.sampler_logprobs):
                sampled[i, : len(lps)] = torch.tensor(lps, dtype=sampled.dtype)
            metrics["sampler_logprob_gap"] = float(P.masked_mean((sampled - rollout.logprobs).abs(), mask))
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

    def save_final(self) -> None:
        """The policy in Hugging Face format under ``final/`` (and the value head beside it)."""
        from safetensors.torch import save_file

        out = self.run.final_dir
        out.mkdir(parents=True, exist_ok=True)
        self.policy.save_pretrained(out)
        self.tok.save_pretrained(out)
        if self.value_head is not None:
            save_file({k: v.contiguous() for k, v in self.value_head.state_dict().items()}, str(out / "value_head.safetensors"))
