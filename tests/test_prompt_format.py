"""One prompt format for the whole pipeline: the rule's default, the choice recorded with a model, inheritance by later
stages, and the warning when a user asks a stage for the other choice."""

from __future__ import annotations

import json

import pytest
import yaml

from preftune.cli import main
from preftune.models.prompt_format import PROMPT_FORMAT_FILE, decide_chat_template, uses_chat_template
from preftune.data.tokenize import encode_prompt
from preftune.errors import PreftuneError


def test_the_rule_default(chatml_tokenizer, gpt2_tokenizer):
    templated = encode_prompt(chatml_tokenizer, [{"role": "user", "content": "Hello"}])
    assert encode_prompt(chatml_tokenizer, "Hello") == templated  # a template: a plain prompt is one user turn
    assert chatml_tokenizer.decode(templated) == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    assert encode_prompt(chatml_tokenizer, "Hello", use_chat_template=False) == chatml_tokenizer("Hello")["input_ids"]
    assert encode_prompt(gpt2_tokenizer, "Hello") == gpt2_tokenizer("Hello")["input_ids"]  # no template: raw


def test_decide_records_and_warns(tiny_llama, capsys, tmp_path):
    from preftune.models.loading import load_tokenizer, tiny_tokenizer
    from preftune.models.lora import save_final

    tok = tiny_tokenizer("chatml")
    assert decide_chat_template(tok, False, who="preftune sft") is False and not uses_chat_template(tok)
    save_final(tiny_llama, tok, tmp_path / "final")
    capsys.readouterr()  # transformers' saving progress bar
    assert json.loads((tmp_path / "final" / PROMPT_FORMAT_FILE).read_text()) == {"chat_template": False}
    again = load_tokenizer(tmp_path / "final")
    assert not uses_chat_template(again)  # read back: a plain prompt stays raw for this model
    assert encode_prompt(again, "Hello") == again("Hello")["input_ids"]
    assert decide_chat_template(again, None, who="preftune dpo") is False and capsys.readouterr().err == ""
    assert decide_chat_template(again, True, who="preftune dpo") is True
    assert capsys.readouterr().err == (
        "preftune dpo: warning: this model was trained with plain prompts raw, without the chat template "
        "(preftune_prompt.json), but --chat-template asks for prompts through it; it will see prompts in a format it "
        "was not trained on\n")
    with pytest.raises(PreftuneError, match="preftune eval: --chat-template was asked for, but the tokenizer has no chat template"):
        decide_chat_template(tiny_tokenizer("gpt2"), True, who="preftune eval")


def test_a_later_stage_inherits_the_choice_of_the_model_it_starts_from(tmp_path, chatml_tokenizer):
    from preftune.models.loading import tiny_model

    base = tmp_path / "base"
    tiny_model(len(chatml_tokenizer)).save_pretrained(base)
    chatml_tokenizer.save_pretrained(base)
    common = ["--data", "tests/fixtures/data/pairs.jsonl", "--max-steps", "1", "--batch-size", "2"]
    assert main(["sft", "--model", str(base), "--no-chat-template", "--output-dir", str(tmp_path / "sft"), *common]) == 0
    assert yaml.safe_load((tmp_path / "sft" / "config.yaml").read_text())["chat_template"] is False
    assert main(["dpo", "--model", str(tmp_path / "sft" / "final"), "--output-dir", str(tmp_path / "dpo"), *common]) == 0
    assert yaml.safe_load((tmp_path / "dpo" / "config.yaml").read_text())["chat_template"] is False  # inherited
    assert json.loads((tmp_path / "dpo" / "final" / PROMPT_FORMAT_FILE).read_text()) == {"chat_template": False}
    assert main(["reward", "--model", str(base), "--output-dir", str(tmp_path / "rm"), *common]) == 0
    assert yaml.safe_load((tmp_path / "rm" / "config.yaml").read_text())["chat_template"] is True  # the rule's default
    meta = json.loads((tmp_path / "rm" / "final" / "preftune_reward.json").read_text())
    assert meta["use_chat_template"] is True
    assert json.loads((tmp_path / "rm" / "final" / PROMPT_FORMAT_FILE).read_text()) == {"chat_template": True}


def test_every_final_folder_has_a_model_card(tmp_path, chatml_tokenizer):
    from preftune import __version__
    from preftune.models.loading import tiny_model

    base = tmp_path / "base"
    tiny_model(len(chatml_tokenizer)).save_pretrained(base)
    chatml_tokenizer.save_pretrained(base)
    common = ["--data", "tests/fixtures/data/pairs.jsonl", "--max-steps", "1", "--batch-size", "2"]
    assert main(["dpo", "--model", str(base), "--loss", "ipo", "--output-dir", str(tmp_path / "dpo"), *common]) == 0
    card = (tmp_path / "dpo" / "final" / "README.md").read_text()
    assert card.startswith(f"---\nlibrary_name: transformers\nbase_model: {base}\ntags:\n- preftune\n- dpo\n---\n")
    assert f"Trained with preftune {__version__}: **dpo (loss ipo)** (IPO, Azar et al. 2023) from `{base}`." in card
    assert "- training data: tests/fixtures/data/pairs.jsonl (3 pairs)\n- held-out data: none\n" in card
    assert "| loss |" in card and "| step | 1 |" in card
    assert "```yaml\nmodel: " in card and "loss: ipo\n" in card  # the resolved config
    assert main(["reward", "--model", str(base), "--output-dir", str(tmp_path / "rm"), "--eval-data",
                 "tests/fixtures/data/pairs.jsonl", *common]) == 0
    card = (tmp_path / "rm" / "final" / "README.md").read_text()
    assert "**reward model (bradley_terry)** (Bradley-Terry on preference pairs, Ouyang et al. 2022)" in card
    assert "| eval/accuracy |" in card
