"""Tokenising prompts and completions with safe boundaries.

Prompt and completion are tokenised separately and their ids concatenated; a concatenated string is
never re-tokenised (BPE merges across the boundary would shift it). The rules peers get wrong most often:

* exactly one BOS at the start of a sequence when the tokenizer uses one (a chat template that already
  writes BOS plus a tokenizer that adds it again gives two), and none when it has none (GPT-2);
* exactly one EOS ending each completion, so the model learns to stop;
* a completion mask that is 1 exactly on the completion's tokens (EOS included).
"""

from __future__ import annotations

from dataclasses import dataclass

from preftune.data.formats import PreferencePair, Prompt, SFTExample, UnpairedExample
from preftune.models.prompt_format import uses_chat_template
from preftune.errors import DataError


@dataclass(frozen=True)
class TokenizedSFT:
    input_ids: list[int]
    completion_mask: list[int]  # 1 on completion tokens (the loss is taken there), 0 on the prompt

    @property
    def prompt_length(self) -> int:
        return self.completion_mask.index(1) if 1 in self.completion_mask else len(self.input_ids)


@dataclass(frozen=True)
class TokenizedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]  # completion only, ending with EOS
    rejected_ids: list[int]

    @property
    def chosen_input_ids(self) -> list[int]:
        return self.prompt_ids + self.chosen_ids

    @property
    def rejected_input_ids(self) -> list[int]:
        return self.prompt_ids + self.rejected_ids


def _adds_bos(tokenizer) -> bool:
    """Does plain tokenisation with special tokens put a BOS first? (Llama-2/3 style: yes; GPT-2, SmolLM2: no)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def _strip_extra_bos(ids: list[int], bos: int | None) -> list[int]:
    """Keep at most one leading BOS (a template that writes one plus a tokenizer that adds one gives two)."""
    if bos is None:
        return ids
    while len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
        ids = ids[1:]
    return ids


def encode_prompt(tokenizer, prompt: Prompt, *, use_chat_template: bool | None = None) -> list[int]:
    """Token ids of a prompt, ready for the completion's ids to follow.

    A conversation goes through the chat template with ``add_generation_prompt=True``. A plain string becomes one
    user turn of the template when ``use_chat_template`` is true, and is tokenised as it is when false; ``None``
    follows the pipeline's one rule (:mod:`preftune.models.prompt_format`: the choice recorded with the tokenizer's
    model, else the template when the tokenizer has one). When the tokenizer adds a BOS to plain text, exactly one
    BOS leads the result.
    """
    if use_chat_template is None:
        use_chat_template = uses_chat_template(tokenizer)
    if isinstance(prompt, str) and use_chat_template:
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(prompt, list):
        if getattr(tokenizer, "chat_template", None) is None:
            raise DataError(f"conversational data needs a tokenizer with a chat template; {type(tokenizer).__name__} has none")
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if _adds_bos(tokenizer) and (not ids or ids[0] != tokenizer.bos_token_id):
            ids = [tokenizer.bos_token_id] + ids
    else:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if _adds_bos(tokenizer):
            ids = [tokenizer.bos_token_id] + ids
    return _strip_extra_bos(list(ids), tokenizer.bos_token_id)


def encode_completion(tokenizer, completion: str) -> list[int]:
    """Token ids of a completion: no special tokens added, exactly one EOS at the end."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError(f"the tokenizer {type(tokenizer).__name__} has no EOS token; completions must end with one")
    ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    while ids and ids[-1] == eos:  # a completion that already spells the EOS keeps just one
        ids.pop()
    return ids + [eos]


def _too_long(source, field: str, length: int, max_length: int) -> DataError:
    return DataError(
        f"{length} tokens is over the length limit of {max_length} (raise max_length, or skip such rows with skip_bad_rows)",
        file=source.file if source else None, row=source.row if source else None, field=field,
    )


def encode_sft(tokenizer, example: SFTExample, max_length: int | None = None, *, use_chat_template: bool | None = None) -> TokenizedSFT:
    prompt_ids = encode_prompt(tokenizer, example.prompt, use_chat_template=use_chat_template)
    completion_ids = encode_completion(tokenizer, example.completion)
    n = len(prompt_ids) + len(completion_ids)
    if max_length is not None and n > max_length:
        raise _too_long(example.source, "prompt+completion", n, max_length)
    return TokenizedSFT(prompt_ids + completion_ids, [0] * len(prompt_ids) + [1] * len(completion_ids))


def encode_pair(tokenizer, pair: PreferencePair, max_length: int | None = None, *, use_chat_template: bool | None = None) -> TokenizedPair:
    """Tokenise a pair; ``max_length`` bounds prompt+chosen and prompt+rejected separately."""
    prompt_ids = encode_prompt(tokenizer, pair.prompt, use_chat_template=use_chat_template)
    chosen = encode_completion(tokenizer, pair.chosen)
    rejected = encode_completion(tokenizer, pair.rejected)
    if max_length is not None:
        for field, ids in (("chosen", chosen), ("rejected", rejected)):
            if len(prompt_ids) + len(ids) > max_length:
                raise _too_long(pair.source, f"prompt+{field}", len(prompt_ids) + len(ids), max_length)
    return TokenizedPair(prompt_ids, chosen, rejected)


def encode_unpaired(tokenizer, example: UnpairedExample, max_length: int | None = None, *, use_chat_template: bool | None = None) -> TokenizedSFT:
    return encode_sft(tokenizer, SFTExample(example.prompt, example.completion, example.source), max_length,
                      use_chat_template=use_chat_template)
