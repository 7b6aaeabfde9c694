"""Soft preference labels from the data to the losses (reward model and DPO), and online DPO on a tiny model."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from preftune.data.convert import load_examples
from preftune.data.formats import PreferencePair
from preftune.errors import DataError
from preftune.losses.preference import PairLogps, cdpo_loss, dpo_loss, paired_loss
from preftune.losses.reward import bradley_terry_loss

# softplus(x) = log(1 + e^x), to 7 digits
SP1, SPM1, SP2, SPM2 = 1.3132617, 0.3132617, 2.1269280, 0.1269280


# -- the losses --------------------------------------------------------------------------------------------------


def test_soft_bradley_terry_hand_computed_and_hard_at_one():
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])  # r_w - r_l = 1, -2
    target = torch.tensor([0.8, 0.3])
    losses = bradley_terry_loss(chosen, rejected, target=target, reduction="none")
    # 0.8 softplus(-1) + 0.2 softplus(1) ; 0.3 softplus(2) + 0.7 softplus(-2)
    assert losses.tolist() == pytest.approx([0.8 * SPM1 + 0.2 * SP1, 0.3 * SP2 + 0.7 * SPM2], abs=1e-6)
    assert losses.tolist() == pytest.approx([0.5132617, 0.7269280], abs=1e-6)
    hard = bradley_terry_loss(chosen, rejected, reduction="none")
    assert bradley_terry_loss(chosen, rejected, target=torch.ones(2), reduction="none").tolist() == pytest.approx(hard.tolist())
    assert hard.tolist() == pytest.approx([SPM1, SP2], abs=1e-6)
    # with a margin the soft label applies to r_w - r_l - m: x = 1 - 0.5
    m = bradley_terry_loss(chosen[:1], rejected[:1], torch.tensor([0.5]), target=torch.tensor([0.8]))
    assert m.item() == pytest.approx(0.8 * 0.4740770 + 0.2 * 0.9740770, abs=1e-6)  # softplus(-0.5), softplus(0.5)


def test_soft_dpo_hand_computed_equals_per_pair_label_smoothing():
    # h = (pi_w - ref_w) - (pi_l - ref_l) = (-1 + 2) - (-3 + 2) = 2 ; beta = 0.5 -> beta h = 1
    args = (torch.tensor([-1.0, -1.0]), torch.tensor([-3.0, -3.0]), torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0]))
    out = dpo_loss(*args, beta=0.5, target=torch.tensor([0.75, 1.0]))
    assert out.losses.tolist() == pytest.approx([0.75 * SPM1 + 0.25 * SP1, SPM1], abs=1e-6)
    assert out.losses.tolist() == pytest.approx([0.5632617, 0.3132617], abs=1e-6)
    assert out.losses[1].item() == pytest.approx(dpo_loss(*args, beta=0.5).losses[1].item())  # p = 1: plain DPO
    # a constant p = 1 - eps is cDPO's label smoothing
    assert dpo_loss(*args, beta=0.5, target=torch.full((2,), 0.9)).losses.tolist() == pytest.approx(
        cdpo_loss(*args, beta=0.5, label_smoothing=0.1).losses.tolist())
    # cDPO on a soft label: flip noise on the label, target (1 - eps) p + eps (1 - p) = 0.9*0.75 + 0.1*0.25 = 0.7
    assert cdpo_loss(*args, beta=0.5, label_smoothing=0.1, target=torch.tensor([0.75, 0.75])).losses[0].item() == \
        pytest.approx(0.7 * SPM1 + 0.3 * SP1, abs=1e-6)
    x = PairLogps(*args[:2], torch.ones(2), torch.ones(2), *args[2:], target=torch.tensor([0.75, 1.0]))
    assert paired_loss("dpo", x, beta=0.5).losses.tolist() == pytest.approx(out.losses.tolist())
    with pytest.raises(ValueError, match="loss 'ipo' takes hard pairs; soft labels work with sigmoid, cdpo"):
        paired_loss("ipo", x)


# -- data --------------------------------------------------------------------------------------------------------


def test_preference_rows_carry_an_optional_soft_label(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b", "label": 0.7},
            {"prompt": "q", "chosen": "a", "rejected": "c"},
            {"prompt": "q", "chosen": "a", "rejected": "d", "label": "0.25"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = load_examples(path, "auto", kind="preference").examples
    assert [p.label for p in pairs] == [0.7, None, 0.25]
    assert pairs[1] == PreferencePair("q", "a", "c")
    for bad in (1.5, "high", True):
        path.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b", "label": bad}) + "\n")
        with pytest.raises(DataError, match=f"p.jsonl, row 1, field 'label': expected a probability in \\[0, 1\\], got {bad!r}"):
            load_examples(path, "auto", kind="preference")


def test_reward_items_and_batches_pass_the_label_to_the_loss(chatml_tokenizer):
    from preftune.train.reward import collate, reward_loss, tokenize_example

    soft = tokenize_example(chatml_tokenizer, PreferencePair("q", "yes", "no", label=0.8), "bradley_terry")
    hard = tokenize_example(chatml_tokenizer, PreferencePair("q", "yes", "nope"), "bradley_terry")
    assert soft.target == 0.8 and hard.target is None
    batch = collate([soft, hard], "bradley_terry", pad_id=0, layout="separate")
    assert batch.targets.tolist() == pytest.approx([0.8, 1.0])
    assert collate([hard], "bradley_terry", pad_id=0, layout="separate").targets is None

    class FixedRewards(torch.nn.Module):  # rewards chosen 1, rejected 0 for every pair
        def forward(self, packed):
            return torch.tensor([[1.0], [0.0]] * (packed.counts.numel() // 2))

    loss, _ = reward_loss(FixedRewards(), batch)
    assert loss.item() == pytest.approx(((0.8 * SPM1 + 0.2 * SP1) + SPM1) / 2, abs=1e-6)
    with pytest.raises(DataError, match="field 'label': a soft label needs objective bradley_terry"):
        tokenize_example(chatml_tokenizer, PreferencePair("q", "yes", "no", label=0.8), "plackett_luce")


def test_dpo_step_passes_the_label_to_the_loss(chatml_tokenizer, tiny_llama):
    import torch.nn.functional as F

    from preftune.data.tokenize import encode_pair
    from preftune.models.loading import tiny_model
    from preftune.train.dpo import LossKnobs, PairCollator, PairItem, PreferenceStep, Reference

    t = encode_pair(chatml_tokenizer, PreferencePair("What is 2 + 2?", "It is 4.", "Hello world"), 64)
    ref = Reference("copy", ref_model=tiny_model(len(chatml_tokenizer), seed=5))  # a different model: h != 0
    step = PreferenceStep("sigmoid", LossKnobs(beta=0.5), ref)
    collate = PairCollator(chatml_tokenizer.pad_token_id, "separate")
    hard = step(tiny_llama, collate([PairItem(0, t.prompt_ids, t.chosen_ids, t.rejected_ids)]))
    soft = step(tiny_llama, collate([PairItem(0, t.prompt_ids, t.chosen_ids, t.rejected_ids, 0.7)]))
    z = torch.tensor(hard.metrics["rewards/chosen"] - hard.metrics["rewards/rejected"])
    assert abs(z.item()) > 1e-3
    assert hard.loss.item() == pytest.approx(F.softplus(-z).item(), abs=1e-5)
    assert soft.loss.item() == pytest.approx((0.7 * F.softplus(-z) + 0.3 * F.softplus(z)).item(), abs=1e-5)


def test_cli_dpo_soft_labels(tmp_path):
    from preftune.cli import main
    from preftune.models.loading import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer("chatml")
    tiny_model(len(tok)).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    rows = [{"prompt": f"What is {i} + {i}?", "chosen": f"It is {2 * i}.", "rejected": f"It is {2 * i + 1}."} for i in range(4)]

    def run(name: str, label, *extra) -> list[float]:
        data = tmp_path / f"{name}.jsonl"
        data.write_text("".join(json.dumps({**r, **({} if label is None else {"label": label})}) + "\n" for r in rows))
        code = main(["dpo", "--model", str(tmp_path / "model"), "--data", str(data), "--output-dir", str(tmp_path / name),
                     "--batch-size", "2", "--max-steps", "2", "--learning-rate", "1e-2", "--warmup", "0", *extra])
        if code:
            return code
        return [json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    hard, one, soft = run("hard", None), run("one", 1.0), run("soft", 0.6)
    assert one == pytest.approx(hard, abs=1e-6)  # p = 1 is the hard loss
    assert soft[0] == pytest.approx(hard[0])  # step 1: policy = reference, every loss is log 2
    assert soft[1] != pytest.approx(hard[1], abs=1e-4)
    assert run("ignored", 0.6, "--no-soft-labels") == pytest.approx(hard, abs=1e-6)
    assert run("ipo", 0.6, "--loss", "ipo") == 2  # a loss that cannot take soft labels: a clear error


# -- online DPO --------------------------------------------------------------------------------------------------


PROMPTS = ["Hello world", "How do I bake bread?", "What is 2 + 2?", "Thanks", "Python code", "Safety first",
           "The quick", "I am not sure"]


def vowel_fraction(prompts, responses):
    """Toy verifiable reward: the fraction of the response's characters that are 'a', 'e' or 'o'."""
    return [sum(c in "aeo" for c in r) / max(len(r), 1) for r in responses]


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _online(tok, tmp_path, reward_fn, *, steps=24, batch_size=8, minibatch_size=16, ppo_epochs=1, labels="soft", loss="sigmoid",
            beta=0.5, learning_rate=3e-2):
    from preftune.models.loading import tiny_model
    from preftune.rl.dpo import OnlineDPO, OnlineDPOSettings
    from preftune.rl.loop import OnlineSettings, OnlineTrainer
    from preftune.runs import RunDir

    policy = tiny_model(len(tok), seed=0)
    ref = copy.deepcopy(policy).requires_grad_(False)
    algo = OnlineDPO(OnlineDPOSettings(loss=loss, beta=beta, labels=labels))
    settings = OnlineSettings(steps=steps, batch_size=batch_size, num_samples=2, max_new_tokens=8, learning_rate=learning_rate,
                              minibatch_size=minibatch_size, ppo_epochs=ppo_epochs, kl_coef=algo.beta, sample_every=0, seed=0)
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    return OnlineTrainer(policy=policy, tokenizer=tok, algorithm=algo, reward_fn=reward_fn, prompts=PROMPTS,
                         prompt_ids=ids, settings=settings, run=RunDir(tmp_path / "online"), ref_model=ref)


def test_pair_targets():
    from preftune.rl.dpo import pair_targets

    scores = torch.tensor([1.0, 0.0, 0.0, 2.0, 0.5, 0.5])
    assert pair_targets(scores, "soft").tolist() == pytest.approx([0.7310586, 0.1192029, 0.5])
    assert pair_targets(scores, "hard").tolist() == [1.0, 0.0, 0.5]


@pytest.mark.parametrize("labels,loss,scale", [("soft", "sigmoid", 20.0), ("hard", "ipo", 1.0), ("hard", "sigmoid", 1.0)])
def test_online_dpo_moves_the_preference_the_right_way(chatml_tokenizer, tmp_path, one_thread, labels, loss, scale):
    from preftune.runs import read_metrics

    # soft labels read the reward as Bradley-Terry: a vowel fraction gap of 0.1 is a 2-logit preference at scale 20
    # (~0.5 at scale 1: hardly any signal); hard labels need no scale
    trainer = _online(chatml_tokenizer, tmp_path, lambda p, r: [scale * x for x in vowel_fraction(p, r)], labels=labels,
                      loss=loss)
    trainer.train()
    rows = read_metrics(trainer.run.path)
    rewards = [r["reward_mean"] / scale for r in rows]
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.07, rewards
    for key in ("kl", "dpo_loss", "rewards/accuracy", "label_confidence", "label_ties"):
        assert key in rows[-1]


def test_iterative_rounds_keep_pairs_together(chatml_tokenizer, tmp_path, one_thread):
    from preftune.errors import PreftuneError
    from preftune.runs import read_metrics

    # a round: 8 prompts (16 responses), 2 epochs of minibatches of 2 pairs: 8 optimizer steps on the round's pairs
    trainer = _online(chatml_tokenizer, tmp_path, vowel_fraction, steps=2, minibatch_size=4, ppo_epochs=2)
    assert not trainer.single_pass
    trainer.train()
    assert len(read_metrics(trainer.run.path)) == 2
    odd = _online(chatml_tokenizer, tmp_path / "odd", vowel_fraction, steps=1, minibatch_size=3)
    with pytest.raises(PreftuneError, match="minibatch_size 3 must be a multiple of 2"):
        odd.train()


def test_online_dpo_with_a_scripted_ai_labeller(chatml_tokenizer, tmp_path, one_thread):

    from preftune.cai.constitution import load_constitution
    from preftune.cai.label import LabelSettings, PairwiseLabelReward
    from preftune.runs import read_metrics

    class VowelJudge:  # prefers the option with more a/e/o, read from the rendered question
        name = "vowels"

        def chat(self, conversations, params):
            raise AssertionError("no chain of thought asked")

        def choice_logprobs(self, conversations, choices):
            out = []
            for c in conversations:
                text = c[-1]["content"]
                a = text.split("(A) ", 1)[1].split("\n\n(B) ", 1)[0]
                b = text.split("\n\n(B) ", 1)[1].rsplit("\n\n", 1)[0]
                va, vb = vowel_fraction(None, [a, b])
                out.append([20 * va, 20 * vb])  # logits; the labeller normalises over the two letters
            return out

    reward = PairwiseLabelReward(load_constitution(), VowelJudge(), LabelSettings(num_principles=1))
    trainer = _online(chatml_tokenizer, tmp_path, reward, steps=24)

    def mean_vowels() -> float:  # of the samples of a fixed step's rollout (same prompts and seeds)
        texts = trainer.engine.generate([trainer.prompt_ids[i] for i in range(8) for _ in range(4)],
                                        trainer.sampling_params(0)).texts
        return sum(vowel_fraction(None, texts)) / len(texts)

    before = mean_vowels()
    trainer.train()
    rows = read_metrics(trainer.run.path)
    assert all(abs(r["reward_mean"]) < 1e-5 for r in rows)  # ±½ logit per pair: the mean is 0
    assert mean_vowels() > before + 0.07


def test_cli_dpo_online_with_a_reward(tmp_path):
    from preftune.cli import main
    from preftune.models.loading import tiny_model, tiny_tokenizer
    from preftune.runs import read_metrics

    tok = tiny_tokenizer("chatml")
    tiny_model(len(tok)).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    (tmp_path / "toy.py").write_text("def vowels(prompts, responses):\n"
                                     "    return [sum(c in 'aeo' for c in r) / max(len(r), 1) for r in responses]\n")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "completion": "x"}) + "\n" for p in PROMPTS))
    base = ["dpo", "--online", "--model", str(tmp_path / "model"), "--data", str(prompts), "--reward",
            f"{tmp_path / 'toy.py'}:vowels", "--max-new-tokens", "6", "--batch-size", "4"]
    assert main(base + ["--output-dir", str(tmp_path / "online"), "--max-steps", "2"]) == 0
    assert len(read_metrics(tmp_path / "online")) == 2 and (tmp_path / "online" / "final").exists()
    assert main(base + ["--output-dir", str(tmp_path / "rounds"), "--rounds", "2", "--prompts-per-round", "8",
                        "--epochs-per-round", "2"]) == 0
    assert len(read_metrics(tmp_path / "rounds")) == 2
    # the AI labeller (here the tiny model itself, asked the default constitution's question) instead of a reward
    ai = ["dpo", "--online", "--model", str(tmp_path / "model"), "--data", str(prompts), "--feedback-model",
          str(tmp_path / "model"), "--max-new-tokens", "6", "--batch-size", "4", "--output-dir", str(tmp_path / "ai"),
          "--max-steps", "2", "--num-principles", "2"]
    assert main(ai) == 0
    rows = read_metrics(tmp_path / "ai")
    assert len(rows) == 2 and all(abs(r["reward_mean"]) < 1e-5 and 0 <= r["label_confidence"] <= 1 for r in rows)
    assert main(["dpo", "--online", "--model", str(tmp_path / "model"), "--output-dir", str(tmp_path / "x")]) == 2
    assert main(["dpo", "--reward", "x:y", "--output-dir", str(tmp_path / "x")]) == 2
