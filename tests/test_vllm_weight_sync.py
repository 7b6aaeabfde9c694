"""VLLMEngine in online RL, against a fake vLLM (no GPU, no vllm package): every optimizer step pushes the policy's
new weights to every vLLM worker, under the Hugging Face parameter names, before the next generation."""

from __future__ import annotations

import copy
import sys
import types
from dataclasses import dataclass, field

import pytest
import torch

from preftune.models.loading import tiny_model
from preftune.models.policy import value_head_for
from preftune.rl.loop import OnlineSettings, OnlineTrainer
from preftune.rl.ppo import PPO, PPOSettings
from preftune.runs import RunDir


@dataclass
class FakeModel:
    loads: list = field(default_factory=list)  # one {name: tensor (copied)} per load_weights call

    def load_weights(self, items):
        self.loads.append({name: t.detach().clone() for name, t in items})


@dataclass
class FakeWorker:
    model_runner: types.SimpleNamespace


class FakeLLM:
    """What VLLMEngine uses of ``vllm.LLM``: ``generate`` and ``collective_rpc`` over its workers; it records the
    order of events (generations and weight loads)."""

    def __init__(self, num_workers: int, eos_id: int, vocab: int):
        self.models = [FakeModel() for _ in range(num_workers)]
        self.workers = [FakeWorker(types.SimpleNamespace(model=m)) for m in self.models]
        self.eos, self.vocab = eos_id, vocab
        self.events: list[str] = []
        self.sampling: list = []

    def generate(self, prompts, params, use_tqdm=True):
        self.events.append("generate")
        self.sampling.append(params)
        outs = []
        for j, p in enumerate(prompts):
            ids = p["prompt_token_ids"]
            tokens = [(sum(ids) * 7 + j * 5 + t * 11) % (self.vocab - 20) + 20 for t in range(3 + j % 3)] + [self.eos]
            table = [{tok: types.SimpleNamespace(logprob=-1.0)} for tok in tokens]
            outs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(
                token_ids=tokens, logprobs=table, text=" ".join(map(str, tokens[:-1])), finish_reason="stop")]))
        return outs

    def collective_rpc(self, fn):
        self.events.append("load")
        return [fn(w) for w in self.workers]


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in ``vllm`` package: SamplingParams keeps its arguments, TokensPrompt is a dict."""
    module = types.ModuleType("vllm")
    module.SamplingParams = lambda **kwargs: types.SimpleNamespace(**kwargs)
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = dict
    module.inputs = inputs
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    return module


def test_every_update_reaches_every_vllm_worker(fake_vllm, chatml_tokenizer, tmp_path):
    from preftune.generation.vllm_engine import VLLMEngine

    tok = chatml_tokenizer
    policy = tiny_model(len(tok), seed=0)
    llm = FakeLLM(num_workers=2, eos_id=tok.eos_token_id, vocab=len(tok))
    engine = VLLMEngine.__new__(VLLMEngine)  # without vllm.LLM: the fake stands in for it
    engine.llm = llm
    settings = OnlineSettings(steps=2, batch_size=2, num_samples=1, max_new_tokens=6, learning_rate=1e-3,
                              minibatch_size=1, ppo_epochs=1, kl_coef=0.05, sample_every=0, seed=5)
    prompts = ["Hello world", "What is 2 + 2?", "Thanks"]
    trainer = OnlineTrainer(policy=policy, tokenizer=tok, algorithm=PPO(PPOSettings()), reward_fn=lambda p, r: [len(x) / 10 for x in r],
                            prompts=prompts, prompt_ids=[tok(p)["input_ids"] for p in prompts], settings=settings,
                            run=RunDir(tmp_path), ref_model=copy.deepcopy(policy).requires_grad_(False),
                            value_head=value_head_for(policy.config.hidden_size), engine=engine)
    snapshots = []
    step = trainer.optimizer.step

    def step_and_snapshot(*args, **kwargs):  # the policy's weights right after each optimizer step
        out = step(*args, **kwargs)
        snapshots.append({k: v.detach().clone() for k, v in policy.state_dict().items()})
        return out

    trainer.optimizer.step = step_and_snapshot
    trainer.train()
    # 2 steps × 2 minibatches of 1 response: 4 optimizer steps, each followed by one load before the next generation
    assert llm.events == ["generate", "load", "load", "generate", "load", "load"]
    assert len(snapshots) == 4
    for model in llm.models:  # every worker got every update, with the Hugging Face names of the policy
        assert len(model.loads) == 4
        for loaded, current in zip(model.loads, snapshots):
            assert loaded.keys() == current.keys()
            assert all(torch.equal(loaded[k], current[k]) for k in current)
    assert not torch.equal(llm.models[0].loads[0]["model.norm.weight"], llm.models[0].loads[1]["model.norm.weight"])
    # the sampling parameters of each step, as vLLM takes them (a per-step seed: exact resume)
    assert [(p.seed, p.max_tokens, p.temperature, p.n, p.logprobs) for p in llm.sampling] == [
        (5 * 1_000_003, 6, 1.0, 1, 0), (5 * 1_000_003 + 1, 6, 1.0, 1, 0)]
