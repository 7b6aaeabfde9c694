"""Tokenisation boundaries: one BOS, one EOS ending each completion, a completion mask, no re-tokenisation."""

from __future__ import annotations

import pytest

from preftune.data.formats import PreferencePair, SFTExample
from preftune.data.tokenize import encode_completion, encode_pair, encode_prompt, encode_sft


def test_chatml_prompt_and_completion(chatml_tokenizer):
    tok = chatml_tokenizer
    prompt = [{"role": "user", "content": "Hello"}]
    ids = encode_prompt(tok, prompt)
    assert tok.decode(ids) == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    completion = encode_completion(tok, "Hi world")
    assert completion[-1] == tok.eos_token_id and completion.count(tok.eos_token_id) == 1
    assert completion[:-1] == tok("Hi world", add_special_tokens=False)["input_ids"]


def test_completion_that_spells_eos_keeps_one(chatml_tokenizer):
    ids = encode_completion(chatml_tokenizer, "Done.<|im_end|>")
    assert ids == encode_completion(chatml_tokenizer, "Done.")
    assert ids.count(chatml_tokenizer.eos_token_id) == 1


def test_sft_mask_covers_exactly_the_completion(chatml_tokenizer):
    tok = chatml_tokenizer
    ex = encode_sft(tok, SFTExample([{"role": "user", "content": "Hi"}], "Hello"))
    prompt_ids = encode_prompt(tok, [{"role": "user", "content": "Hi"}])
    completion_ids = encode_completion(tok, "Hello")
    assert ex.input_ids == prompt_ids + completion_ids
    assert ex.completion_mask == [0] * len(prompt_ids) + [1] * len(completion_ids)
    assert ex.prompt_length == len(prompt_ids)


def test_gpt2_style_no_bos_one_eos(gpt2_tokenizer):
    tok = gpt2_tokenizer
    assert tok.bos_token_id is None
    pair = encode_pair(tok, PreferencePair("The quick brown fox", " jumps", " sleeps"))
    assert pair.prompt_ids == tok("The quick brown fox")["input_ids"]
    assert pair.chosen_ids == tok(" jumps")["input_ids"] + [tok.eos_token_id]
    assert pair.chosen_input_ids.count(tok.eos_token_id) == 1 and pair.chosen_input_ids[-1] == tok.eos_token_id


def test_gpt2_style_conversation_without_template_is_an_error(gpt2_tokenizer):
    from preftune.errors import DataError

    with pytest.raises(DataError, match="needs a tokenizer with a chat template"):
        encode_prompt(gpt2_tokenizer, [{"role": "user", "content": "hi"}])


def test_boundary_is_not_retokenised(gpt2_tokenizer):
    # "fox" + "es" tokenised separately is not what tokenising "foxes" gives; we keep the separate ids.
    tok = gpt2_tokenizer
    pair = encode_pair(tok, PreferencePair("The fox", "es run", "es sit"))
    assert pair.chosen_input_ids == tok("The fox")["input_ids"] + tok("es run")["input_ids"] + [tok.eos_token_id]


def _bos_adding_tokenizer():
    """A Llama-3-like tokenizer: plain tokenisation adds BOS AND the chat template writes BOS too."""
    from tokenizers.processors import TemplateProcessing

    from preftune.models.loading import tiny_tokenizer

    tok = tiny_tokenizer("chatml")
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)])
    tok.chat_template = "{{ bos_token }}" + tok.chat_template
    return tok


def test_exactly_one_bos_when_template_and_tokenizer_both_add_it():
    tok = _bos_adding_tokenizer()
    assert tok("a")["input_ids"][0] == tok.bos_token_id  # the tokenizer adds BOS
    ids = encode_prompt(tok, [{"role": "user", "content": "Hi"}])
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    plain = encode_prompt(tok, "Hello world", use_chat_template=False)
    assert plain[0] == tok.bos_token_id and plain.count(tok.bos_token_id) == 1
    completion = encode_completion(tok, "Hello")
    assert tok.bos_token_id not in completion  # no special tokens inside a completion


def test_default_tokenizer_boundaries(default_tokenizer):
    tok = default_tokenizer
    assert (tok.bos_token, tok.eos_token) == ("<|im_start|>", "<|im_end|>")
    ids = encode_prompt(tok, [{"role": "user", "content": "What is 2 + 2?"}])
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n")
    assert ids[:2] != [tok.bos_token_id, tok.bos_token_id]
    ex = encode_sft(tok, SFTExample([{"role": "user", "content": "What is 2 + 2?"}], "4"))
    assert tok.decode([i for i, m in zip(ex.input_ids, ex.completion_mask) if m]) == "4<|im_end|>"
    assert ex.input_ids[-1] == tok.eos_token_id and ex.input_ids.count(tok.eos_token_id) == 3  # system and user turn ends + the completion's


def test_plain_prompt_with_chat_template_flag(chatml_tokenizer):
    ids = encode_prompt(chatml_tokenizer, "Hello", use_chat_template=True)
    assert ids == encode_prompt(chatml_tokenizer, [{"role": "user", "content": "Hello"}])
