"""Models as chat partners: the one interface every critic, labeller and policy-as-chat of the AI-feedback steps uses.

::

    model = chat_model("smollm2-135m-instruct")               # a local model (LocalChatModel)
    model = chat_model("gpt-4o-mini", base_url="https://...")  # an OpenAI-compatible endpoint (RemoteChatModel)

(``chat_model`` lives in :mod:`preftune.remote`, which sits above this module: generation never imports the client.)
    model.chat([[{"role": "user", "content": "Hi"}]], SamplingParams(max_new_tokens=32))   # -> ["Hello! ..."]
    model.choice_logprobs([conversation], ["A", "B"])          # -> [[log P("A"), log P("B")]]

``choice_logprobs`` reads, for each conversation, the log-probability of each choice string as the first token of
the assistant's reply (a choice's single-token spellings "A" and " A" pooled). A local model renormalises them over
the choices (the mass on every other token is ignored); callers that need probabilities over the choices normalise
anyway, so an endpoint may return them un-normalised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from preftune.data.tokenize import encode_prompt
from preftune.errors import PreftuneError
from preftune.generation.engine import HFEngine, SamplingParams

Conversation = list[dict[str, str]]


@runtime_checkable
class ChatModel(Protocol):
    name: str

    def chat(self, conversations: Sequence[list[dict[str, str]]], params: SamplingParams) -> list[str]: ...

    def choice_logprobs(self, conversations: Sequence[list[dict[str, str]]], choices: Sequence[str]) -> list[list[float]]: ...
    # log-prob of each choice string (e.g. "A", "B") as the first token of the assistant's reply, one list per conversation


def _check_conversation(conversation, i: int) -> None:
    if not isinstance(conversation, list) or not conversation:
        raise PreftuneError(f"conversation {i} must be a non-empty list of {{role, content}} messages")
    if conversation[-1].get("role") == "assistant":
        raise PreftuneError(f"conversation {i} ends with an assistant turn; the model's reply must come next")


class LocalChatModel:
    """A Hugging Face causal LM behind :class:`ChatModel`: replies through the batched :class:`HFEngine`, choices
    from one scoring pass (:func:`preftune.generation.scoring.choice_logprobs`). Conversations go through the model's chat
    template (:func:`preftune.data.tokenize.encode_prompt`)."""

    def __init__(self, model, tokenizer, *, name: str = "local", batch_size: int = 16, score_batch_size: int = 8,
                 decode_dtype: str = "auto", show_progress: bool = True):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.score_batch_size = score_batch_size
        self.engine = HFEngine(model, tokenizer, batch_size=batch_size, show_progress=show_progress,
                               decode_dtype=decode_dtype, desc=f"{name}: generating")

    def chat(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[str]:
        for i, c in enumerate(conversations):
            _check_conversation(c, i)
        if not conversations:
            return []
        ids = [encode_prompt(self.tokenizer, list(c)) for c in conversations]
        return list(self.engine.generate(ids, params).texts)

    def choice_logprobs(self, conversations: Sequence[Conversation], choices: Sequence[str]) -> list[list[float]]:
        # the scoring loop of the evaluation judges (lazy: eval/ sits above generation/; the function needs only
        # models/ and data/)
        from preftune.generation.scoring import choice_logprobs

        for i, c in enumerate(conversations):
            _check_conversation(c, i)
        if not conversations:
            return []
        lp = choice_logprobs(self.model, self.tokenizer, [list(c) for c in conversations], list(choices),
                             batch_size=self.score_batch_size, desc=f"{self.name}: scoring choices")
        return lp.tolist()
