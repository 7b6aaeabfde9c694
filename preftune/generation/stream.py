"""Text deltas from tokens as they are generated (what ``preftune serve`` streams and ``preftune chat`` prints).

A token is not always a whole character (byte-level BPE splits a multi-byte character over several tokens) and a
stop string may be spelt over several tokens, so each new token's text cannot simply be decoded and shown:
:class:`TextStream` decodes everything generated so far and shows only what can no longer change — it holds back an
incomplete character (the decoder's U+FFFD at the end) and any ending that could still grow into a stop string. The
engine's final text (cut before the stop string) is the truth; :meth:`TextStream.finish` gives what is left of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

_INCOMPLETE = "\ufffd"


def _stop_prefix_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest ending of ``text`` that is the beginning of a stop string (0 when none)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class TextStream:
    """One generated sequence, token by token -> the text it adds each time (possibly ``""``).

    ``eos_ids`` end the text (the engine's EOS tokens); ``stop`` are the request's stop strings.
    """

    def __init__(self, tokenizer, *, stop: Sequence[str] = (), eos_ids: Iterable[int] = ()):
        self.tokenizer, self.stop, self.eos_ids = tokenizer, tuple(s for s in stop if s), set(eos_ids)
        self.tokens: list[int] = []
        self.sent = ""  # what has been shown so far
        self.ended = False  # an EOS or a stop string was seen: nothing more is shown until finish()

    def push(self, token: int) -> str:
        if self.ended:
            return ""
        if token in self.eos_ids:
            self.ended = True
            return ""
        self.tokens.append(int(token))
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cuts = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if cuts:
            self.ended = True
            safe = text[: min(cuts)]
        else:
            safe = text.rstrip(_INCOMPLETE)
            safe = safe[: len(safe) - _stop_prefix_length(safe, self.stop)]
        if len(safe) <= len(self.sent) or not safe.startswith(self.sent):
            return ""  # nothing new (or the decoder rewrote earlier text: finish() settles it)
        delta, self.sent = safe[len(self.sent):], safe
        return delta

    def finish(self, final_text: str) -> str:
        """What is left to show of the engine's ``final_text`` (empty when the stream already showed it all)."""
        delta = final_text[len(self.sent):] if final_text.startswith(self.sent) else ""
        self.sent = final_text if final_text.startswith(self.sent) else self.sent
        self.ended = True
        return delta
