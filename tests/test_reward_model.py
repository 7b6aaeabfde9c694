"""The scalar-head model reads the last real token whatever the padding; the reward interface; rule models;
combined rewards; normalisation; save/load."""

from __future__ import annotations

import json
import math

import pytest
import torch

from preftune.errors import PreftuneError
from preftune.models.heads import ScalarHeadModel, last_real_index, pad_rows
from preftune.models.packing import pack_pairs
from preftune.rewards.base import META_FILE, PythonReward, RewardFunction, as_reward_function
from preftune.rewards.loading import load_reward
from preftune.rewards.combined import CombinedReward
from preftune.rewards.model import RewardModel, normalization_stats
from preftune.rewards.rules import RuleModel, reward_from_log_prob

EOS = 2  # the tiny chatml tokenizer's <|im_end|>, also its pad token (pad = eos, like the default model)


@pytest.fixture
def net(tiny_llama):
    return ScalarHeadModel.from_causal_lm(tiny_llama, seed=0)


def _alone(net, seqs):
    """Each sequence run on its own (no padding at all): the reference reading."""
    return torch.cat([net(torch.tensor([s])) for s in seqs])


SEQS = [[5, 6, 7, 8, EOS], [9, 10, EOS], [11, 12, 13, 14, 15, 16, EOS]]


def test_last_real_index_both_sides():
    _, right = pad_rows(SEQS, EOS, "right")
    _, left = pad_rows(SEQS, EOS, "left")
    assert last_real_index(right).tolist() == [4, 2, 6]
    assert last_real_index(left).tolist() == [6, 6, 6]


@pytest.mark.parametrize("side", ["right", "left"])
def test_reads_last_real_token_with_pad_equal_to_eos(net, side):
    ids, mask = pad_rows(SEQS, EOS, side)
    assert (ids == EOS).sum() > len(SEQS)  # padding uses the EOS id, the bug's trigger
    torch.testing.assert_close(net(ids, mask), _alone(net, SEQS), atol=1e-5, rtol=0)


def test_hf_default_reading_is_the_peer_bug(net):
    """HF's sequence-classification forward takes the rightmost token != pad: with pad = eos that is the token
    *before* the final EOS. Ours reads the EOS itself; HF's value equals ours on the sequence without its EOS."""
    ids, mask = pad_rows(SEQS, EOS, "right")
    hf = net.seqcls(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(hf, _alone(net, [s[:-1] for s in SEQS]), atol=1e-5, rtol=0)
    assert (hf - net(ids, mask)).abs().max() > 1e-3


@pytest.mark.parametrize("layout", ["packed", "rows", "separate"])
def test_packed_pairs_read_each_completion(net, layout):
    prompts, chosen, rejected = [[5, 6, 7], [9]], [[8, 9, EOS], [3, EOS]], [[10, EOS], [4, 4, 4, EOS]]
    batch = pack_pairs(prompts, chosen, rejected, pad_id=EOS, layout=layout)
    expected = _alone(net, [prompts[0] + chosen[0], prompts[0] + rejected[0], prompts[1] + chosen[1], prompts[1] + rejected[1]])
    torch.testing.assert_close(net(batch), expected, atol=1e-5, rtol=0)


def test_gpt2_body_left_and_right(gpt2_tokenizer):
    from preftune.models.loading import tiny_model

    net = ScalarHeadModel.from_causal_lm(tiny_model(len(gpt2_tokenizer), kind="gpt2"))
    seqs = [[5, 6, 7, 0], [9, 0]]  # GPT-2: eos = pad = 0
    for side in ("left", "right"):
        ids, mask = pad_rows(seqs, 0, side)
        torch.testing.assert_close(net(ids, mask), _alone(net, seqs), atol=1e-5, rtol=0)


def test_encoder_reads_with_right_padding_only():
    from transformers import AutoModelForSequenceClassification, BertConfig

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        num_labels=1, pad_token_id=0)
    net = ScalarHeadModel(AutoModelForSequenceClassification.from_config(config).eval())
    assert not net.is_decoder
    seqs = [[1, 5, 6, 7, 2], [1, 9, 2]]
    ids, mask = pad_rows(seqs, 0, "right")
    torch.testing.assert_close(net(ids, mask), _alone(net, seqs), atol=1e-5, rtol=0)
    ids, mask = pad_rows(seqs, 0, "left")
    with pytest.raises(PreftuneError, match="encoder reward models read the first token: pad on the right"):
        net(ids, mask)


def test_lora_starts_equal_and_trains_adapters_and_head_only(tiny_llama, net):
    lora = ScalarHeadModel.from_causal_lm(tiny_llama, seed=0, lora={"r": 4})
    ids, mask = pad_rows(SEQS, EOS, "left")
    torch.testing.assert_close(lora(ids, mask), net(ids, mask), atol=1e-6, rtol=0)  # LoRA B = 0 at init
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "score" in n for n in trainable)
    assert any("score" in n for n in trainable)


# -- the reward interface ---------------------------------------------------------------------------


def test_python_reward_per_item_and_batched():
    per_item = as_reward_function(lambda p, r: len(r))
    out = per_item(["a", "b"], ["xx", "yyy"])
    assert out.dtype == torch.float32 and out.tolist() == [2.0, 3.0] and per_item.batched is False
    batched = as_reward_function(lambda ps, rs: [len(p) + len(r) for p, r in zip(ps, rs)])
    assert batched(["a", "bb"], ["xx", "yyy"]).tolist() == [3.0, 5.0] and batched.batched is True
    assert isinstance(batched, RewardFunction) and as_reward_function(batched) is batched
    explicit = as_reward_function(lambda p, r: 1.0, batched=False)
    assert explicit(["a"], ["b"]).tolist() == [1.0]


def test_python_reward_errors():
    with pytest.raises(PreftuneError, match=r"reward function f: 2 prompts but 1 responses \(they must pair up\)"):
        PythonReward(lambda p, r: 0.0, name="f")(["a", "b"], ["x"])
    with pytest.raises(PreftuneError, match="reward function f: returned 1 rewards for a batch of 2"):
        PythonReward(lambda ps, rs: [1.0], batched=True, name="f")(["a", "b"], ["x", "y"])
    with pytest.raises(PreftuneError, match=r"reward function f: reward of item 1 is nan \(rewards must be finite\)"):
        PythonReward(lambda p, r: float("nan") if r == "y" else 0.0, batched=False, name="f")(["a", "b"], ["x", "y"])
    with pytest.raises(PreftuneError, match="reward function f: item 0 gave str, not a number"):
        PythonReward(lambda p, r: "high", batched=False, name="f")(["a"], ["x"])


def _save_rm(net, tokenizer, folder, **kwargs):
    rm = RewardModel(net, tokenizer, batch_size=2, **kwargs)
    rm.save(folder)
    return rm


def test_reward_model_normalisation_and_round_trip(net, chatml_tokenizer, tmp_path):
    rm = RewardModel(net, chatml_tokenizer, batch_size=2)
    prompts = ["How do I bake bread?", "What is 2 + 2?", "Hello world!"]
    responses = ["Mix flour, water, salt and yeast.", "It is 4.", "Thanks, have a nice day."]
    raw = rm.raw(prompts, responses)
    torch.testing.assert_close(rm(prompts, responses), raw)  # identity before fitting
    mean, std = rm.fit_normalization(prompts, responses)
    assert mean == pytest.approx(raw.double().mean().item(), abs=1e-7)
    assert std == pytest.approx(raw.double().std(unbiased=False).item(), abs=1e-7)
    normed = rm(prompts, responses)
    assert normed.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert normed.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    # the batch order and size do not change a reward
    torch.testing.assert_close(rm(prompts[::-1], responses[::-1]), normed.flip(0), atol=1e-5, rtol=0)
    rm.save(tmp_path / "rm")
    meta = json.loads((tmp_path / "rm" / META_FILE).read_text())
    assert meta["kind"] == "reward_model" and meta["normalization"] == {"mean": mean, "std": std, "count": 3}
    loaded = load_reward(tmp_path / "rm", device="cpu")  # the net above is fp32 on the CPU (auto: bf16 on a GPU)
    assert isinstance(loaded, RewardModel) and (loaded.mean, loaded.std) == (mean, std)
    torch.testing.assert_close(loaded(prompts, responses), normed, atol=1e-5, rtol=0)


def test_normalization_stats_values():
    # [1, 2, 3, 6]: mean 3, population variance (4 + 1 + 0 + 9) / 4 = 3.5
    assert normalization_stats(torch.tensor([1.0, 2.0, 3.0, 6.0])) == pytest.approx((3.0, math.sqrt(3.5)))
    assert normalization_stats(torch.tensor([2.0, 2.0])) == (2.0, 1.0)  # σ = 0 → 1 (no division by zero)


def test_reward_model_conversational_prompt_equals_manual_tokens(net, chatml_tokenizer):
    from preftune.data.tokenize import encode_completion, encode_prompt

    rm = RewardModel(net, chatml_tokenizer)
    prompt = [{"role": "user", "content": "What is 2 + 2?"}]
    ids = encode_prompt(chatml_tokenizer, prompt) + encode_completion(chatml_tokenizer, "It is 4.")
    assert rm.raw([prompt], ["It is 4."]).item() == pytest.approx(net(torch.tensor([ids]))[0, 0].item(), abs=1e-6)


# -- rule models ------------------------------------------------------------------------------------


def test_rule_model_probabilities_and_reward(net, chatml_tokenizer, tmp_path):
    rule_model = RuleModel(net, chatml_tokenizer)
    prompts, responses = ["Tell me a joke"] * 2, ["Why did the chicken cross the road?", "You are the joke."]
    z = rule_model.logits(prompts, responses, "Do not insult the user")
    torch.testing.assert_close(rule_model.probabilities(prompts, responses, "Do not insult the user"), torch.sigmoid(z))
    with pytest.raises(PreftuneError, match="this rule model judges any rule: give it one"):
        rule_model(prompts, responses)
    as_reward = rule_model.for_rule("Do not insult the user", "logprob")
    torch.testing.assert_close(as_reward(prompts, responses), torch.nn.functional.logsigmoid(z))
    rule_model.save(tmp_path / "rules")
    loaded = load_reward(tmp_path / "rules", rule="Do not insult the user", device="cpu")
    torch.testing.assert_close(loaded(prompts, responses), torch.sigmoid(z), atol=1e-6, rtol=0)


def test_multiclass_rule_model(tiny_llama, chatml_tokenizer):
    net3 = ScalarHeadModel.from_causal_lm(tiny_llama, num_outputs=3)
    classes = ["complied", "refused", "refused_with_reason"]
    model = RuleModel(net3, chatml_tokenizer, classes=classes, reward_classes=["refused", "refused_with_reason"])
    z = model.logits(["Hi"], ["I can't help with that."], "")
    assert z.shape == (1, 3)
    expected = z.softmax(-1)[0, 1:].sum()
    assert model(["Hi"], ["I can't help with that."]).item() == pytest.approx(expected.item(), abs=1e-6)
    with pytest.raises(PreftuneError, match=r"rule model: reward class 'maybe' is not one of \['complied', 'refused', 'refused_with_reason'\]"):
        RuleModel(net3, chatml_tokenizer, classes=classes, reward_classes=["maybe"])


def test_rule_reward_transforms():
    log_p = torch.log(torch.tensor([0.25, 0.5]))
    assert reward_from_log_prob(log_p, "prob").tolist() == pytest.approx([0.25, 0.5])
    assert reward_from_log_prob(log_p, "logprob").tolist() == pytest.approx([math.log(0.25), math.log(0.5)])
    assert reward_from_log_prob(log_p, "logit").tolist() == pytest.approx([math.log(1 / 3), 0.0], abs=1e-6)


# -- combined ---------------------------------------------------------------------------------------


def test_combined_reward_numbers_in_characters():
    pref = as_reward_function(lambda p, r: 2.0)
    rule_a = as_reward_function(lambda p, r: 1.0 if "please" in r else 0.0)
    rule_b = as_reward_function(lambda p, r: 0.5)
    combined = CombinedReward(pref, [("polite", rule_a, 1.0), ("half", rule_b, 2.0)], preference_weight=1.5,
                              length_penalty=0.1, length_unit="chars")
    # item 0 "please" (6 chars): 1.5·2 + (1·1 + 2·0.5)/2 − 0.1·6 = 3 + 1 − 0.6 = 3.4
    # item 1 "no" (2 chars):      1.5·2 + (1·0 + 2·0.5)/2 − 0.1·2 = 3 + 0.5 − 0.2 = 3.3
    assert combined(["p", "q"], ["please", "no"]).tolist() == pytest.approx([3.4, 3.3], abs=1e-6)
    parts = combined.components(["p"], ["please"])
    assert sorted(parts) == ["length", "preference", "rule/half", "rule/polite", "total"]
    assert parts["length"].tolist() == [6.0]


def test_combined_reward_token_length_and_config(chatml_tokenizer, tmp_path):
    combined = CombinedReward(None, [], length_penalty=0.5, length_unit="tokens", tokenizer=chatml_tokenizer)
    n = len(chatml_tokenizer("Hello world!", add_special_tokens=False)["input_ids"])
    assert combined(["p"], ["Hello world!"]).tolist() == [-0.5 * n]
    with pytest.raises(PreftuneError, match="length_unit 'tokens' needs a tokenizer"):
        CombinedReward(as_reward_function(lambda p, r: 0.0), [], length_penalty=0.1)
    module = tmp_path / "my_rewards.py"
    module.write_text("def pref(p, r):\n    return 1.0\n\ndef rule(prompts, responses):\n    return [0.25] * len(responses)\n")
    config = tmp_path / "combo.yaml"
    config.write_text(f"preference: '{module}:pref'\nrules:\n  - {{model: '{module}:rule', weight: 2.0}}\n"
                      "length_penalty: 0.01\nlength_unit: chars\n")
    reward = load_reward(config)
    assert reward(["p"], ["abcd"]).tolist() == pytest.approx([1.0 + 2.0 * 0.25 - 0.04])
    (tmp_path / "bad.yaml").write_text("preference: x:y\nlenght_penalty: 1\n")
    with pytest.raises(PreftuneError, match="combined reward: unknown option 'lenght_penalty'; did you mean 'length_penalty'"):
        load_reward(tmp_path / "bad.yaml")


def test_load_reward_errors(tmp_path):
    with pytest.raises(PreftuneError, match="reward 'nothing-here' is not a reward model folder"):
        load_reward("nothing-here")
    with pytest.raises(PreftuneError, match=f"{tmp_path} is not a preftune reward model folder"):
        load_reward(tmp_path)
    with pytest.raises(PreftuneError, match="reward 'math:nope': module 'math' has no attribute 'nope'"):
        load_reward("math:nope")


def test_reward_from_a_file_that_defines_a_dataclass(tmp_path):
    # a script with a dataclass (examples/personalise_simulated.py) used as `reward:FILE.py:fn`: the dataclass machinery
    # looks the module up in sys.modules while the file runs, so loading must register it (it failed with an
    # AttributeError before); a file named like a real module ("json.py") must not shadow it
    module = tmp_path / "json.py"
    module.write_text("from dataclasses import dataclass\n\n@dataclass\nclass Settings:\n    scale: float = 2.0\n\n"
                      "def shorter(prompts, responses):\n    return [-Settings().scale * len(r) for r in responses]\n")
    reward = load_reward(f"{module}:shorter")
    assert reward(["p", "q"], ["ab", "abcd"]).tolist() == [-4.0, -8.0]
    import json

    assert json.dumps({"a": 1}) == '{"a": 1}'


def test_score_completions_scores_in_batches_and_checks_each():
    from preftune.rewards.base import score_completions

    calls = []

    def length(prompts, responses):
        calls.append(len(responses))
        return [len(r) for r in responses]

    reward = as_reward_function(length, batched=True)
    out = score_completions(reward, ["p"] * 5, ["a", "bb", "ccc", "dddd", "eeeee"], batch_size=2)
    assert out.dtype == torch.float32 and out.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert calls == [2, 2, 1]
    assert score_completions(reward, [], [], batch_size=2).tolist() == []
    with pytest.raises(PreftuneError, match=r"judge: 2 prompts but 1 responses"):
        score_completions(reward, ["p", "q"], ["a"], desc="judge")
    nan = as_reward_function(lambda p, r: [float("nan")] * len(r), batched=True)
    with pytest.raises(PreftuneError, match=r"reward of item 0 is nan"):
        score_completions(nan, ["p"], ["a"])
