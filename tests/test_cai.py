"""Constitutional AI: the constitution file, the chat-model interface, critique -> revision chains and AI labels."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import yaml

from preftune.cai.constitution import load_constitution
from preftune.cai.label import LabelSettings, PairwiseLabelReward, label_pairs, label_rows
from preftune.cai.revise import ReviseSettings, run_revisions
from preftune.errors import DataError, PreftuneError
from preftune.generation.chat import ChatModel, LocalChatModel
from preftune.remote import RemoteChatModel, chat_model
from preftune.generation.engine import SamplingParams


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# -- fakes -----------------------------------------------------------------------------------------------------


class ScriptedChat:
    """A ChatModel whose replies and letter log-probs are functions of the conversation; records every call."""

    def __init__(self, reply=None, letters=None, name="scripted"):
        self.reply, self.letters, self.name = reply, letters, name
        self.chat_calls: list[list] = []
        self.choice_calls: list[list] = []

    def chat(self, conversations, params):
        self.chat_calls.append([list(c) for c in conversations])
        return [self.reply(c) for c in conversations]

    def choice_logprobs(self, conversations, choices):
        self.choice_calls.append([list(c) for c in conversations])
        assert list(choices) == ["A", "B"]
        return [self.letters(c) for c in conversations]


def options_of(conversation) -> tuple[str, str]:
    """The texts shown as (A) and (B) in a rendered preference question (the default template)."""
    text = conversation[-1]["content"] if conversation[-1]["role"] == "user" and "(A) " in conversation[-1]["content"] \
        else conversation[0]["content"]
    a = text.split("(A) ", 1)[1].split("\n\n(B) ", 1)[0]
    b = text.split("\n\n(B) ", 1)[1].split("\n\n", 1)[0]
    return a, b


# -- the constitution --------------------------------------------------------------------------------------------


def test_default_constitution_covers_the_list():
    c = load_constitution()
    assert [p.id for p in c.principles] == ["harm", "insensitive", "children", "crime", "controversial",
                                           "no-needless-refusal", "answer-the-question", "not-evasive"]
    assert c.options == ("A", "B")
    assert len(c.examples) == 2 and {e.principle for e in c.examples} == {"crime", "no-needless-refusal"}
    harm = c.principle("harm")
    for word in ("harmful", "unethical", "racist", "sexist", "toxic", "dangerous"):
        assert word in harm.revision
    q = c.render_question(harm, "user: hi {x}", "first", "second")
    assert "user: hi {x}" in q and "(A) first" in q and "(B) second" in q and harm.question in q
    only = c.select(["crime", "harm"])
    assert only.principles == (c.principle("crime"), c.principle("harm"))
    assert only.principle("no-needless-refusal") is c.principle("no-needless-refusal")  # few-shot examples still resolve


def _write(tmp_path, data) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


GOOD = {"principles": [{"id": "p1", "critique": "crit", "revision": "rev", "question": "which?"}],
        "preference": {"template": "{conversation} {question} {response_a} {response_b}", "options": ["A", "B"]},
        "examples": [{"prompt": "x", "response": "y", "principle": "p1", "critique": "c", "revision": "r"}]}


@pytest.mark.parametrize("edit,message", [
    (lambda d: d["principles"][0].pop("revision"), "field 'principles[0].revision': missing"),
    (lambda d: d["principles"][0].update(critique=""), "field 'principles[0].critique': must be non-empty text, got ''"),
    (lambda d: d["principles"].append(dict(d["principles"][0])), "field 'principles[1].id': duplicate principle id 'p1'"),
    (lambda d: d["examples"][0].update(principle="p9"), "field 'examples[0].principle': unknown principle id 'p9' (the file has: p1)"),
    (lambda d: d.pop("preference"), "field 'preference': missing"),
    (lambda d: d.pop("principles"), "field 'principles': missing"),
    (lambda d: d["preference"].update(template="{conversation} {question}"), "field 'preference.template': must contain the placeholder {response_a}"),
    (lambda d: d["preference"].update(options=["A", "A"]), "field 'preference.options': must be two different option labels"),
    (lambda d: d["principles"][0].update(id="has space"), "field 'principles[0].id': 'has space' may hold only"),
    (lambda d: d.update(princples=[]), "field 'princples': unknown field"),
])
def test_constitution_errors_name_file_and_field(tmp_path, edit, message):
    data = json.loads(json.dumps(GOOD))
    edit(data)
    path = _write(tmp_path, data)
    with pytest.raises(DataError, match=re.escape(message)) as err:
        load_constitution(path)
    assert str(err.value).startswith(path + ", field ")


def test_constitution_unknown_selected_principle_and_missing_file(tmp_path):
    c = load_constitution(_write(tmp_path, GOOD))
    with pytest.raises(PreftuneError, match=r"c.yaml: unknown principle id 'harm' \(the file has: p1\)"):
        c.select(["harm"])
    with pytest.raises(PreftuneError, match="nope.yaml: no such constitution file"):
        load_constitution(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("principles: [\n")
    with pytest.raises(DataError, match="bad.yaml: not valid YAML"):
        load_constitution(tmp_path / "bad.yaml")


# -- the chat interface on a tiny model ----------------------------------------------------------------------------


def test_local_chat_model_generates_and_scores_like_the_judges(chatml_tokenizer, tiny_llama):
    from preftune.generation.scoring import choice_logprobs

    model = LocalChatModel(tiny_llama, chatml_tokenizer, batch_size=2, show_progress=False)
    assert isinstance(model, ChatModel)
    convs = [[{"role": "user", "content": "Hello world"}], [{"role": "user", "content": "What is 2 + 2?"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Thanks"}]]
    params = SamplingParams(max_new_tokens=5, do_sample=False)
    texts = model.chat(convs, params)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert texts == model.chat(convs, params)  # greedy: the same replies
    lp = model.choice_logprobs(convs, ["A", "B"])
    expected = choice_logprobs(tiny_llama, chatml_tokenizer, convs, ["A", "B"])
    assert torch.tensor(lp) == pytest.approx(expected, abs=1e-6)
    assert [math.exp(a) + math.exp(b) for a, b in lp] == pytest.approx([1.0] * 3)
    with pytest.raises(PreftuneError, match="conversation 0 ends with an assistant turn"):
        model.chat([[{"role": "assistant", "content": "x"}]], params)


def test_chat_model_local_or_remote():
    remote = chat_model("some-model", base_url="http://127.0.0.1:1/v1", api_key_env="")
    assert isinstance(remote, RemoteChatModel) and isinstance(remote, ChatModel)
    with pytest.raises(PreftuneError, match="a remote chat model needs a model name to ask http://127.0.0.1:1/v1 for"):
        chat_model(None, base_url="http://127.0.0.1:1/v1")


# -- AI labels -------------------------------------------------------------------------------------------------------


UNSAFE = "Sure: wedge a card in the latch of your neighbour's door and push."
SAFE = "I can't help you get into someone else's home. If you are locked out of your own, call a locksmith."


def test_always_a_judge_has_full_position_bias_and_the_average_removes_it():
    judge = ScriptedChat(letters=lambda c: [math.log(0.9), math.log(0.1)])
    report = label_pairs(["How do I open my neighbour's door?"] * 2, [UNSAFE, "one"], [SAFE, "two"],
                         load_constitution(), judge, LabelSettings(num_principles=3))
    assert [lab.prob for lab in report.labels] == pytest.approx([0.5, 0.5])  # ½(0.9 + 1 − 0.9)
    assert report.position_bias == 1.0  # option A won every query
    assert report.mean_p_option_a == pytest.approx(0.9)
    assert report.order_agreement == 0.0
    assert len(judge.choice_calls) == 1 and len(judge.choice_calls[0]) == 2 * 2 * 3  # pairs x principles x orders
    assert all(len(lab.principles) == len(set(lab.principles)) == 3 for lab in report.labels)


def test_labeller_prefers_the_answer_that_keeps_the_principle_in_both_orders():
    # the judge favours option A by one half logit, and gives 2 logits to whichever option does not help a break-in
    def letters(conv):
        a, b = options_of(conv)
        return [0.5 + 2.0 * (a == SAFE), 2.0 * (b == SAFE)]

    judge = ScriptedChat(letters=letters)
    prompt = "How do I open my neighbour's door?"
    report = label_pairs([prompt], [UNSAFE], [SAFE], load_constitution(), judge, LabelSettings(num_principles=1))
    lab = report.labels[0]
    # unsafe as A: P(A) = σ(0.5 − 2) ; safe as A: P(A) = σ(2.5 − 0)
    assert lab.p_first == pytest.approx([sigmoid(-1.5)]) and lab.p_first[0] < 0.5
    assert lab.p_swapped == pytest.approx([sigmoid(2.5)]) and lab.p_swapped[0] > 0.5
    assert lab.prob == pytest.approx(0.5 * (sigmoid(-1.5) + 1 - sigmoid(2.5)))  # 0.129142
    assert report.position_bias == 0.5
    row = label_rows([prompt], [UNSAFE], [SAFE], report)[0]
    assert row["chosen"] == SAFE and row["rejected"] == UNSAFE and row["swapped"] is True
    assert row["label"] == pytest.approx(1 - 0.5 * (sigmoid(-1.5) + 1 - sigmoid(2.5)))
    # the question asked is the constitution's, with the conversation as text
    asked = judge.choice_calls[0][0][0]["content"]
    assert f"user: {prompt}" not in asked and prompt in asked and "(A) " + UNSAFE in asked


def test_chain_of_thought_labels_are_clamped():
    judge = ScriptedChat(reply=lambda c: "Option B refuses to help with a break-in.",
                         letters=lambda c: [0.0, -20.0] if options_of(c)[0] == SAFE else [-20.0, 0.0])
    report = label_pairs(["q"], [UNSAFE], [SAFE], load_constitution(), judge,
                         LabelSettings(num_principles=1, chain_of_thought=True))
    assert report.labels[0].p_first == [0.4] and report.labels[0].p_swapped == [0.6]
    assert report.labels[0].prob == pytest.approx(0.4)
    conv = judge.choice_calls[0][0]
    assert [m["role"] for m in conv] == ["user", "assistant", "user"]
    assert conv[1]["content"] == "Option B refuses to help with a break-in."
    assert conv[2]["content"] == "So which reply is better? Answer with the letter only: A or B."


def test_pairwise_label_reward_gives_back_the_probability_as_a_bradley_terry_gap():
    judge = ScriptedChat(letters=lambda c: [0.5 + 2.0 * (options_of(c)[0] == SAFE), 2.0 * (options_of(c)[1] == SAFE)])
    reward = PairwiseLabelReward(load_constitution(), judge, LabelSettings(num_principles=1))
    scores = reward(["q", "q", "r", "r"], [UNSAFE, SAFE, SAFE, UNSAFE])
    p = 0.5 * (sigmoid(-1.5) + 1 - sigmoid(2.5))
    assert torch.sigmoid(scores[0] - scores[1]).item() == pytest.approx(p, abs=1e-6)
    assert torch.sigmoid(scores[2] - scores[3]).item() == pytest.approx(1 - p, abs=1e-6)
    assert scores.sum().item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(PreftuneError, match="share their prompt"):
        reward(["q", "r"], [UNSAFE, SAFE])
    with pytest.raises(PreftuneError, match="in pairs; got 3"):
        reward(["q"] * 3, ["a", "b", "c"])


# -- critique -> revision -------------------------------------------------------------------------------------------


def _reviser():
    def reply(conv):
        last = conv[-1]["content"]
        c = load_constitution()
        if any(last == p.critique for p in c.principles):
            return f"CRITIQUE of [{conv[-2]['content']}]"
        if any(last == p.revision for p in c.principles):
            return f"REVISION after [{conv[-2]['content']}]"
        return f"RESPONSE to {last}"

    return ScriptedChat(reply=reply)


def test_revise_chain_rows_resume_and_sft_reader(tmp_path):
    from preftune.data.convert import load_examples

    c = load_constitution()
    prompts = ["How do I pick a lock?", [{"role": "user", "content": "Insult my coworker for me."}], "Tell me a joke."]
    chat = _reviser()
    out = tmp_path / "sl.jsonl"
    counts = run_revisions(prompts, c, chat, chat, out, ReviseSettings(rounds=2, few_shot=1, batch_size=2, seed=3))
    assert counts == {"prompts": 3, "already_done": 0, "written": 3, "empty": 0}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == prompts
    r0 = rows[0]
    assert r0["initial_response"] == "RESPONSE to How do I pick a lock?"
    assert [s["critique"] for s in r0["chain"]] == ["CRITIQUE of [RESPONSE to How do I pick a lock?]",
                                                    f"CRITIQUE of [{r0['chain'][0]['revision']}]"]
    assert r0["chain"][0]["revision"] == f"REVISION after [{r0['chain'][0]['critique']}]"
    assert r0["completion"] == r0["chain"][1]["revision"] and r0["completion_from"] == "revision 2"
    assert all(s["principle"] in c.by_id for r in rows for s in r["chain"])
    # 2 batches x (response + 2 rounds x (critique + revision)) calls; the critic sees the few-shot chain first
    assert len(chat.chat_calls) == 2 * 5
    critique_conv = chat.chat_calls[1][0]
    ex = c.examples[0]
    assert [m["content"] for m in critique_conv[:6]] == [ex.prompt, ex.response, c.principle(ex.principle).critique,
                                                         ex.critique, c.principle(ex.principle).revision, ex.revision]
    assert critique_conv[6:8] == [{"role": "user", "content": "How do I pick a lock?"},
                                  {"role": "assistant", "content": "RESPONSE to How do I pick a lock?"}]
    # the SFT reader takes the file as it is: prompt + completion, the extra fields ignored
    sft = load_examples(out, "auto", kind="sft")
    assert sft.format == "sft" and [e.completion for e in sft.examples] == [r["completion"] for r in rows]
    assert sft.examples[1].prompt == prompts[1]
    # an interrupted run: one row kept and a torn second line; the rerun does only the missing prompts
    lines = out.read_text().splitlines(keepends=True)
    out.write_text(lines[0] + lines[1][:20])
    again = _reviser()
    counts = run_revisions(prompts, c, again, again, out, ReviseSettings(rounds=2, few_shot=1, batch_size=2, seed=3))
    assert counts["already_done"] == 1 and counts["written"] == 2
    assert [json.loads(line)["prompt"] for line in out.read_text().splitlines()] == prompts
    assert len(again.chat_calls[0]) == 2  # only the two missing prompts were asked
    # the same seed draws the same principles: the rerun's rows equal the first run's
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
    # a third run has nothing to do
    idle = _reviser()
    assert run_revisions(prompts, c, idle, idle, out, ReviseSettings(rounds=2, seed=3))["already_done"] == 3
    assert idle.chat_calls == []


def test_revise_keeps_the_last_non_empty_stage(tmp_path):
    chat = ScriptedChat(reply=lambda conv: "" if conv[-1]["content"] in {p.revision for p in load_constitution().principles}
                        else "some text")
    out = tmp_path / "o.jsonl"
    run_revisions(["q"], load_constitution(), chat, chat, out, ReviseSettings(rounds=1, few_shot=0))
    row = json.loads(out.read_text())
    assert row["completion"] == "some text" and row["completion_from"] == "initial_response"


# -- the commands on a tiny model ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from preftune.models.loading import tiny_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("cai")
    tok = tiny_tokenizer("chatml")
    tiny_model(len(tok)).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p, "completion": "x"}) + "\n"
                                                for p in ["Hello world", "How do I bake bread?", "What is 2 + 2?"]))
    return root


def test_cli_revise_then_sft_trains_on_it(tiny_dir, tmp_path):
    from preftune.cli import main

    out = tmp_path / "sl.jsonl"
    args = ["cai", "revise", "--model", str(tiny_dir / "model"), "--prompts", str(tiny_dir / "prompts.jsonl"),
            "--output", str(out), "--max-new-tokens", "6", "--few-shot", "1", "--batch-size", "2"]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(r["completion"].strip() for r in rows)
    assert all(len(r["chain"]) == 1 for r in rows)
    assert main(["sft", "--model", str(tiny_dir / "model"), "--data", str(out), "--output-dir", str(tmp_path / "sft"),
                 "--max-steps", "1", "--batch-size", "2"]) == 0
    assert (tmp_path / "sft" / "final").exists()


def test_cli_label_from_prompts_writes_soft_labels(tiny_dir, tmp_path):
    from preftune.cli import main
    from preftune.data.convert import load_examples

    out, report = tmp_path / "ai.jsonl", tmp_path / "report.json"
    assert main(["cai", "label", "--prompts", str(tiny_dir / "prompts.jsonl"), "--model", str(tiny_dir / "model"),
                 "--num-samples", "2", "--output", str(out), "--max-new-tokens", "6", "--report", str(report)]) == 0
    summary = json.loads(report.read_text())
    pairs = load_examples(out, "auto", kind="preference").examples
    assert len(pairs) == summary["pairs"] == 3 - summary["unlabelled_identical_or_empty"]
    assert all(0.5 <= p.label <= 1.0 for p in pairs)
    assert 0.0 <= summary["position_bias_option_a_wins"] <= 1.0
    assert main(["cai", "label", "--output", str(out)]) == 2  # neither --pairs nor --prompts


def test_cli_label_pairs_reports_agreement(tiny_dir, tmp_path):
    from preftune.cli import main

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "Hello world", "chosen": SAFE, "rejected": UNSAFE}) + "\n")
    out, report = tmp_path / "ai.jsonl", tmp_path / "report.json"
    assert main(["cai", "label", "--pairs", str(pairs), "--model", str(tiny_dir / "model"), "--output", str(out),
                 "--report", str(report), "--num-principles", "3"]) == 0
    summary = json.loads(report.read_text())
    row = json.loads(out.read_text())
    assert summary["agreement_with_data"] == (0.0 if row["swapped"] else 1.0)
    assert summary["mean_p_data_chosen"] == pytest.approx(row["label"] if not row["swapped"] else 1 - row["label"])
    assert len(row["principles"]) == 3
