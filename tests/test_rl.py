"""Online RL on a tiny model with a verifiable toy reward: the reward rises, KL stays bounded, big beta holds still."""

from __future__ import annotations

import copy

import pytest
import torch

from preftune.models.loading import tiny_model
from preftune.models.policy import value_head_for
from preftune.rl.loop import OnlineSettings, OnlineTrainer
from preftune.rl.pg import PGSettings, PolicyGradient
from preftune.rl.ppo import PPO, PPOSettings
from preftune.runs import RunDir, read_metrics

PROMPTS = ["Hello world", "How do I bake bread?", "What is 2 + 2?", "Thanks", "Python code", "Safety first",
           "The quick", "I am not sure"]


def vowel_fraction(prompts, responses):
    """Toy verifiable reward: the fraction of the response's characters that are 'a', 'e' or 'o'."""
    return [sum(c in "aeo" for c in r) / max(len(r), 1) for r in responses]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead (and noise on a busy machine)
    yield
    torch.set_num_threads(n)


def make_trainer(tok, method: str, tmp_path, *, kl_coef: float = 0.005, steps: int = 20, device: str = "cpu",
                 **overrides):
    policy = tiny_model(len(tok), seed=0).to(device)
    ref = copy.deepcopy(policy).requires_grad_(False)
    k = 1 if method == "ppo" else 4
    settings = OnlineSettings(steps=steps, batch_size=16 if k == 1 else 8, num_samples=k, max_new_tokens=8,
                              learning_rate=1e-2, minibatch_size=16, ppo_epochs=4, kl_coef=kl_coef, sample_every=0, seed=0)
    for key, value in overrides.items():
        setattr(settings, key, value)
    if method == "ppo":
        algo, head = PPO(PPOSettings(vf_coef=0.5)), value_head_for(policy.config.hidden_size).to(device)
    else:
        algo, head = PolicyGradient(PGSettings(method=method, num_samples=k)), None
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    return OnlineTrainer(policy=policy, tokenizer=tok, algorithm=algo, reward_fn=vowel_fraction, prompts=PROMPTS,
                         prompt_ids=ids, settings=settings, run=RunDir(tmp_path / method), ref_model=ref, value_head=head)


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("method,gain", [("ppo", 0.08), ("rloo", 0.15), ("grpo", 0.15)])
def test_reward_rises_with_bounded_kl(chatml_tokenizer, tmp_path, method, gain, device):
    trainer = make_trainer(chatml_tokenizer, method, tmp_path, device=device)
    trainer.train()
    assert next(trainer.policy.parameters()).device.type == device
    rows = read_metrics(trainer.run.path)
    rewards = [r["reward_mean"] for r in rows]
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + gain, rewards
    assert all(abs(r["kl"]) < 60 for r in rows)  # bounded: 8 tokens of a 400-token vocabulary
    for key in ("reward_std", "entropy", "response_length", "clip_frac", "gen_tokens_per_s", "train_tokens_per_s",
                "sampler_logprob_gap"):
        assert key in rows[-1]
    if method == "ppo":
        assert "value_loss" in rows[-1] and "explained_variance" in rows[-1]


def test_large_beta_keeps_policy_near_reference(chatml_tokenizer, tmp_path):
    # GRPO puts beta * KL in the loss: with beta = 5 the policy stays put; with beta = 0.005 it moves (KL 8-16 over
    # the last 4 steps here, from 4.9 on another CPU: the trajectory depends on the float rounding of the machine)
    trainer = make_trainer(chatml_tokenizer, "grpo", tmp_path, kl_coef=5.0, steps=12)
    trainer.train()
    rows = read_metrics(trainer.run.path)
    free = make_trainer(chatml_tokenizer, "grpo", tmp_path / "free", steps=12)
    free.train()
    free_rows = read_metrics(free.run.path)
    assert max(abs(r["kl"]) for r in rows[-4:]) < 0.5
    assert min(r["kl"] for r in free_rows[-4:]) > 2.0
    rewards = [r["reward_mean"] for r in rows]
    assert abs(sum(rewards[-4:]) / 4 - sum(rewards[:4]) / 4) < 0.05


@pytest.mark.parametrize("decode_dtype,atol", [("float32", 1e-4), ("bfloat16", 3e-2)])
def test_old_logprobs_recomputed_match_sampler(chatml_tokenizer, tmp_path, decode_dtype, atol):
    # the trainer recomputes the log-probs in full precision; a bf16 sampler is within bf16 rounding of them
    trainer = make_trainer(chatml_tokenizer, "grpo", tmp_path, steps=1, decode_dtype=decode_dtype)
    rollout = trainer.rollout(0)
    for i, lps in enumerate(rollout.sampler_logprobs):
        assert torch.allclose(rollout.logprobs[i, : len(lps)], torch.tensor(lps), atol=atol)
    # policy == reference at step 0: KL exactly 0
    assert torch.allclose(rollout.logprobs, rollout.ref_logprobs, atol=1e-6)
    assert rollout.mask.shape == rollout.logprobs.shape and rollout.scores.shape == (32,)


@pytest.mark.parametrize("method", ["ppo", "reinforce"])
def test_resume_replays_the_uninterrupted_run(chatml_tokenizer, tmp_path, method):
    full = make_trainer(chatml_tokenizer, method, tmp_path / "full", steps=4, save_every=2)
    full.train()
    expected = read_metrics(full.run.path)
    part = make_trainer(chatml_tokenizer, method, tmp_path / "part", steps=2, save_every=1)
    part.s.steps = 4  # the same run, stopped after step 2 ...
    part.s.save_every = 2
    for step in range(2):
        part.run.log(step + 1, part.step(step))
    from preftune.train.loop import save_checkpoint

    save_checkpoint(part.run, 2, part.module, part.optimizer, part.scheduler, part.accelerator,
                    {"kl_controller": part.kl_ctl.state_dict(), "ptx_cursor": 0, "algorithm": part.algo.state_dict()
                     if hasattr(part.algo, "state_dict") else {}})
    resumed = make_trainer(chatml_tokenizer, method, tmp_path / "part", steps=4, resume=True)  # ... and resumed
    resumed.train()
    got = read_metrics(resumed.run.path)
    from preftune.rl.loop import TIMING_METRICS as volatile
    strip = lambda rows: [{k: v for k, v in r.items() if k not in volatile} for r in rows]  # noqa: E731
    assert strip(got) == strip(expected)


# -- doing less work: group packing, the single-pass update, no reference pass at beta 0 ----------------------------

def _naive_token_logprobs(model, prompt, seq):
    """log pi(y_t | x, y_<t) from the whole model on the unpacked sequence prompt + seq: [len(seq)]."""
    ids = torch.tensor([list(prompt) + list(seq)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
    return logits.log_softmax(-1).gather(-1, torch.tensor(seq)[:, None]).squeeze(-1)


@pytest.mark.parametrize("max_row_tokens", [None, 12, 512])
def test_group_packing_matches_per_sequence_logprobs(chatml_tokenizer, max_row_tokens):
    from preftune.models.packing import pack_shared_prompts
    from preftune.models.policy import policy_forward

    model = tiny_model(len(chatml_tokenizer), seed=3).eval()
    a, b = [5, 6, 7], [8, 9]
    prompts = [a, a, a, b, b, a]  # two groups of 3 + 2 responses, plus a stray repeat of the first prompt
    seqs = [[10, 11, 2], [12], [13, 14, 15, 16], [17, 18], [19, 20, 21], [22, 2]]
    batch = pack_shared_prompts(prompts, seqs, pad_id=0, max_row_tokens=max_row_tokens)
    # one copy of each prompt: 3 + 2 prompt tokens + 15 response tokens, no more
    assert int((batch.doc_ids >= 0).sum()) == 5 + sum(map(len, seqs))
    assert batch.segments.tolist() == [i for i, s in enumerate(seqs) for _ in s]  # the caller's order
    fwd = policy_forward(model, prompts, seqs, pad_id=0, max_row_tokens=max_row_tokens)
    flat = policy_forward(model, prompts, seqs, pad_id=0, share_prompts=False)
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        naive = _naive_token_logprobs(model, p, s)
        assert torch.allclose(fwd.logprobs[i, : len(s)], naive, atol=1e-5), i
        assert torch.allclose(flat.logprobs[i, : len(s)], naive, atol=1e-5), i
        assert fwd.logprobs[i, len(s):].abs().sum() == 0


def test_group_by_prompt_and_pack_groups_layout():
    from preftune.models.packing import group_by_prompt, pack_groups

    assert group_by_prompt([[1, 2], [3], [1, 2]]) == ([[1, 2], [3]], [[0, 2], [1]])
    batch = pack_groups([[1, 2]], [[[3, 4], [5]]], pad_id=0)
    # one row [prompt 1 2 | 3 4 | 5]: completions restart at position 2, parent = the prompt (document 0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 2]]
    assert batch.doc_ids.tolist() == [[0, 0, 1, 1, 2]] and batch.parent_ids.tolist() == [[-1, -1, 0, 0, 0]]
    # token 3 and token 5 are both predicted from the prompt's last column (1); 4 from 3's column (2)
    assert batch.cols.tolist() == [1, 2, 1] and batch.targets.tolist() == [3, 4, 5] and batch.segments.tolist() == [0, 0, 1]
    assert batch.block_mask
    with pytest.raises(ValueError, match="a group needs a non-empty prompt"):
        pack_groups([[]], [[[1]]], pad_id=0)


@pytest.mark.parametrize("method", ["rloo", "grpo", "ppo"])
def test_single_pass_update_equals_the_two_pass_update(chatml_tokenizer, tmp_path, method):
    # one epoch, one minibatch: the old log-probs taken from the training forward give the same step as a separate
    # no-grad pass (the ratio is 1 either way), with one forward fewer
    runs = {}
    for single in (True, False):
        t = make_trainer(chatml_tokenizer, method, tmp_path / str(single), steps=2, ppo_epochs=1, minibatch_size=32,
                         single_pass=single, kl_coef=0.1)
        assert t.single_pass is single
        # plain SGD: Adam would blow float noise in near-zero gradients (e.g. the k3 KL at pi = pi_ref) up to lr-sized steps
        t.optimizer = torch.optim.SGD(t.params, lr=0.5)
        rows = [t.step(s) for s in range(2)]
        runs[single] = (rows, torch.nn.utils.parameters_to_vector(t.module.parameters()).detach())
    (rows1, p1), (rows2, p2) = runs[True], runs[False]
    assert torch.allclose(p1, p2, atol=1e-5)
    for key in ("reward_mean", "kl", "entropy", "policy_loss", "clip_frac"):
        assert rows1[-1][key] == pytest.approx(rows2[-1][key], abs=1e-4), key
    assert rows1[0]["clip_frac"] == 0.0 and rows1[0]["approx_kl"] == pytest.approx(0.0, abs=1e-7)


def test_beta_zero_skips_the_reference_pass(chatml_tokenizer, tmp_path):
    trainer = make_trainer(chatml_tokenizer, "grpo", tmp_path, steps=1, kl_coef=0.0, ppo_epochs=1, minibatch_size=32)
    calls = []
    reference = trainer.reference
    trainer.reference = lambda p, s: calls.append(len(s)) or reference(p, s)
    row = trainer.step(0)
    assert calls == [] and "kl" not in row and row["kl_coef"] == 0.0
    trainer.s.kl_coef = 0.1
    trainer.kl_ctl.value = 0.1
    row = trainer.step(1)
    assert sum(calls) == 32 and "kl" in row


def test_fp32_value_head_on_a_bf16_policy(chatml_tokenizer):
    # a bf16 model (the default on a GPU) with the value head as value_head_for makes it (fp32): the hidden states
    # are cast to the head's dtype, the values come out fp32 (this raised "mat1 and mat2 must have the same dtype")
    from preftune.models.policy import policy_forward

    policy = tiny_model(len(chatml_tokenizer), seed=0).to(torch.bfloat16)
    head = value_head_for(policy.config.hidden_size)
    torch.nn.init.constant_(head.bias, 0.25)
    out = policy_forward(policy, [[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]], pad_id=0, value_head=head)
    assert out.values.dtype == torch.float32 and out.values.shape == (2, 3)
    assert out.values.tolist() == [[0.25, 0.25, 0.0], [0.25, 0.25, 0.25]]  # zero weights: the bias; 0 on padding
