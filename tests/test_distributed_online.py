"""Online RL (PPO and GRPO) on 2 processes (gloo on CPU) against 1 on the same prompts: the same first-step losses
and update; and a run checkpointed by 2 processes resumes with 1.

Generation is a scripted engine (below) whose completions depend only on the prompt and the sample's index within
its group, so both runs train on the same rollout and the test checks the distributed part: prompt sharding,
global whitening and loss normalisation, the gradient sum, metrics and checkpoints written once. (HFEngine's
sampled tokens depend on the batch composition, as with another --gen-batch-size, so they differ between
process counts; their distribution does not.)"""

from __future__ import annotations

import copy
import shutil
from collections import Counter

import pytest
import torch

from preftune.generation.engine import GenerationOutput
from preftune.models.loading import tiny_model
from preftune.models.policy import value_head_for
from preftune.rl.loop import TIMING_METRICS, OnlineSettings, OnlineTrainer
from preftune.rl.pg import PGSettings, PolicyGradient
from preftune.rl.ppo import PPO, PPOSettings
from preftune.runs import RunDir, read_metrics
from tests.conftest import launch_processes

PROMPTS = ["Hello world", "How do I bake bread?", "What is 2 + 2?", "Thanks", "Python code", "Safety first",
           "The quick", "I am not sure"]


class ScriptedEngine:
    """A GenerationEngine whose j-th sample of a prompt is a fixed function of (prompt ids, j): the same
    completions whichever process generates them, in whatever batch."""

    def __init__(self, vocab_size: int, eos_id: int):
        self.vocab, self.eos = vocab_size, eos_id
        self.updates = 0
        self.seeds: list[int] = []

    def generate(self, prompt_ids, params):
        self.seeds.append(params.seed)
        seen: Counter = Counter()
        sequences = []
        for p in prompt_ids:
            j = seen[tuple(p)]
            seen[tuple(p)] += 1
            length = 2 + (sum(p) + 3 * j) % 5
            sequences.append([(sum(p) * 31 + j * 17 + t * 13) % (self.vocab - 20) + 20 for t in range(length)] + [self.eos])
        return GenerationOutput(sequences, [[0.0] * len(s) for s in sequences],
                                [" ".join(map(str, s[:-1])) for s in sequences], [True] * len(sequences),
                                prompt_ids=[list(p) for p in prompt_ids])

    def on_policy_update(self, policy) -> None:
        self.updates += 1


def digit_reward(prompts, responses):
    """Varies within a group (GRPO's advantages are not all 0): the fraction of the text's digits that are odd."""
    return [sum(c in "13579" for c in r) / max(sum(c.isdigit() for c in r), 1) for r in responses]


def make_trainer(tok, method: str, folder, *, steps: int = 1, save_every: int = 0, resume=None) -> OnlineTrainer:
    policy = tiny_model(len(tok), seed=0)
    ref = copy.deepcopy(policy).requires_grad_(False)
    if method == "ppo":  # two epochs: the second minibatch pass sees the first update (ratio != 1, clipping)
        settings = OnlineSettings(steps=steps, batch_size=4, num_samples=1, max_new_tokens=8, learning_rate=1e-3,
                                  minibatch_size=4, ppo_epochs=2, kl_coef=0.05, sample_every=0, seed=0,
                                  save_every=save_every, resume=resume)
        algo, head = PPO(PPOSettings(vf_coef=0.5)), value_head_for(policy.config.hidden_size)
        torch.nn.init.normal_(head.weight, std=0.1, generator=torch.Generator().manual_seed(1))
    else:  # adaptive KL: the controller sees the global KL
        settings = OnlineSettings(steps=steps, batch_size=4, num_samples=4, max_new_tokens=8, learning_rate=1e-3,
                                  minibatch_size=16, kl_coef=0.05, adaptive_kl=True, kl_target=0.01, sample_every=0,
                                  seed=0, save_every=save_every, resume=resume)
        algo, head = PolicyGradient(PGSettings(method=method, num_samples=4)), None
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    return OnlineTrainer(policy=policy, tokenizer=tok, algorithm=algo, reward_fn=digit_reward, prompts=PROMPTS,
                         prompt_ids=ids, settings=settings, run=RunDir(folder), ref_model=ref, value_head=head,
                         engine=ScriptedEngine(len(tok), tok.eos_token_id))


def _train_and_save(tok, method, folder, **kwargs) -> None:
    trainer = make_trainer(tok, method, folder, **kwargs)
    trainer.train()
    torch.save(trainer.engine.seeds, folder / f"seeds-{trainer.rank}.pt")
    if trainer.accelerator.is_main_process:
        torch.save({k: v.detach().clone() for k, v in trainer.module.state_dict().items()}, folder / "weights.pt")
        torch.save(trainer.engine.updates, folder / "updates.pt")


def _in_processes(tok, jobs) -> None:
    for method, folder, kwargs in jobs:
        _train_and_save(tok, method, folder, **kwargs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, chatml_tokenizer):
    root = tmp_path_factory.mktemp("online-distributed")
    for method in ("ppo", "grpo"):
        _train_and_save(chatml_tokenizer, method, root / f"{method}-1")
    launch_processes(_in_processes, 2, chatml_tokenizer,
                     [("ppo", root / "ppo-2", {}), ("grpo", root / "grpo-2", {}),
                      ("grpo", root / "grpo-2-ckpt", {"steps": 2, "save_every": 1})])
    return root


def _compare(one: dict, two: dict) -> None:
    keys = set(one) - set(TIMING_METRICS) - {"step"}
    assert keys == set(two) - set(TIMING_METRICS) - {"step"}
    assert {k: two[k] for k in keys} == pytest.approx({k: one[k] for k in keys}, rel=1e-5, abs=1e-6)


def _max_weight_gap(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("method", ["ppo", "grpo"])
def test_two_processes_take_the_one_process_step(runs, chatml_tokenizer, method):
    one, two = read_metrics(runs / f"{method}-1"), read_metrics(runs / f"{method}-2")
    assert len(one) == len(two) == 1  # the main process alone logs
    # every metric of the first step: the losses (policy, value, KL term), the rollout's statistics, grad norm
    _compare(one[0], two[0])
    assert one[0]["policy_loss"] != 0.0 and one[0]["grad_norm"] > 0
    w1, w2 = torch.load(runs / f"{method}-1" / "weights.pt"), torch.load(runs / f"{method}-2" / "weights.pt")
    # the update itself: a lone process's half-batch gradient moves weights by ~lr (1e-3); summation order < 1e-6
    assert _max_weight_gap(w1, w2) < 1e-5
    start = _initial_weights(chatml_tokenizer, method)
    assert _max_weight_gap(w1, start) > 1e-4
    # the engine heard of every optimizer step (PPO: 2 epochs of one minibatch; GRPO: one)
    assert torch.load(runs / f"{method}-2" / "updates.pt") == (2 if method == "ppo" else 1)
    # each process samples with its own seed; process 0 with a one-process run's
    seeds = [torch.load(runs / f"{method}-2" / f"seeds-{r}.pt") for r in (0, 1)]
    assert seeds[0] == torch.load(runs / f"{method}-1" / "seeds-0.pt") == [0]
    assert seeds[1] == [1 << 40]


def _initial_weights(tok, method: str) -> dict:
    policy = tiny_model(len(tok), seed=0)
    state = {f"policy.{k}": v for k, v in policy.state_dict().items()}
    if method == "ppo":
        head = value_head_for(policy.config.hidden_size)
        torch.nn.init.normal_(head.weight, std=0.1, generator=torch.Generator().manual_seed(1))
        state.update({f"value_head.{k}": v for k, v in head.state_dict().items()})
    return state


def test_a_two_process_checkpoint_resumes_in_one_process(runs, chatml_tokenizer, tmp_path):
    two = runs / "grpo-2-ckpt"
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step-1"]
    assert sorted(p.name for p in (two / "checkpoints" / "step-1").glob("rng-*.pt")) == ["rng-0.pt", "rng-1.pt"]
    # resume the 2-process run's step-1 checkpoint in one process (a copy of its folder), and run step 2
    folder = tmp_path / "resumed"
    shutil.copytree(two, folder)
    _train_and_save(chatml_tokenizer, "grpo", folder, steps=2, save_every=1, resume=True)
    resumed, straight = read_metrics(folder), read_metrics(two)
    assert [r["step"] for r in resumed] == [r["step"] for r in straight] == [1, 2]
    _compare(straight[1], resumed[1])  # step 2 (the KL controller's state travelled too: kl_coef)
    assert resumed[1]["kl_coef"] != resumed[0]["kl_coef"]
    w_resumed, w_straight = torch.load(folder / "weights.pt"), torch.load(two / "weights.pt")
    assert _max_weight_gap(w_resumed, w_straight) < 1e-5


def test_precision_is_recorded_in_the_run_config(runs):
    import yaml

    config = yaml.safe_load((runs / "grpo-2" / "config.yaml").read_text())
    assert config["precision"] == {"master_weights": "float32", "autocast": "no", "device": "cpu"}
