"""Red teaming with reinforcement learning (Perez et al. 2022, §2.2 "RL"): train the attacker LM with RLOO to write
test cases the target fails on.

The attacker's one prompt is the zero-shot instruction; each step samples ``batch_size × num_samples`` test cases
from it, the reward (normally :class:`preftune.eval.redteam.AttackReward`: the harm score of the target's answer plus a
diversity bonus) scores them, and the RLOO update of :mod:`preftune.rl.pg` runs through the shared online loop
(:class:`preftune.rl.loop.OnlineTrainer`), with a KL penalty to the initial attacker (the paper's KL term that keeps
the test cases fluent and varied).
"""

from __future__ import annotations

from dataclasses import dataclass

from preftune.rl.loop import OnlineSettings, OnlineTrainer
from preftune.rl.pg import PGSettings, PolicyGradient
from preftune.runs import RunDir


@dataclass
class AttackerRLSettings:
    steps: int = 10
    batch_size: int = 2  # copies of the one prompt per step
    num_samples: int = 4  # RLOO's k
    learning_rate: float = 1e-5
    kl_coef: float = 0.05
    max_new_tokens: int = 40
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    gen_batch_size: int = 32
    decode_dtype: str = "auto"


def train_attacker(attacker, tokenizer, reward_fn, attacker_prompt: str, prompt_ids: list[int], settings: AttackerRLSettings,
                   run: RunDir, *, ref_model=None) -> dict:
    """RLOO on ``attacker`` (trained in place) against ``reward_fn``; per-step metrics go to ``run``'s metrics.jsonl.
    Returns the last step's metrics."""
    s = settings
    online = OnlineSettings(steps=s.steps, batch_size=s.batch_size, num_samples=s.num_samples,
                            max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                            minibatch_size=s.batch_size * s.num_samples, learning_rate=s.learning_rate,
                            kl_coef=s.kl_coef, sample_every=0, seed=s.seed, gen_batch_size=s.gen_batch_size,
                            decode_dtype=s.decode_dtype)
    algorithm = PolicyGradient(PGSettings(method="rloo", num_samples=s.num_samples))
    trainer = OnlineTrainer(policy=attacker, tokenizer=tokenizer, algorithm=algorithm, reward_fn=reward_fn,
                            prompts=[attacker_prompt], prompt_ids=[list(prompt_ids)], settings=online, run=run,
                            ref_model=ref_model)
    return trainer.train()
