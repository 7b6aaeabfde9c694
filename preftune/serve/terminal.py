"""A chat with a model in the terminal (what ``preftune chat MODEL`` runs).

Each line typed is a user turn; the reply is printed token by token as the engine generates it (the engine's
``on_tokens`` hook and :class:`preftune.generation.stream.TextStream`), and the conversation so far goes through the
model's chat template every turn. Commands: ``/reset`` forgets the conversation (the system message stays),
``/system TEXT`` sets the system message (``/system`` alone removes it), ``/exit`` (or end of input) quits, ``/help``.
When the conversation no longer fits the context with ``max_new_tokens`` to spare, its oldest turns are dropped,
and the chat says so.
"""

from __future__ import annotations

import sys
from typing import TextIO

from preftune.data.tokenize import encode_prompt
from preftune.generation.engine import HFEngine, SamplingParams
from preftune.generation.stream import TextStream

HELP = ("commands: /reset (forget the conversation), /system TEXT (set the system message; /system alone removes it), "
        "/exit (quit), /help")


class ChatSession:
    """The conversation with one model: ``reply(text, write)`` adds a user turn, streams the reply through ``write``
    and adds it to the history."""

    def __init__(self, engine: HFEngine, tokenizer, params: SamplingParams, *, system: str | None = None,
                 context_length: int | None = None, name: str = "the model"):
        self.engine, self.tokenizer, self.params, self.name = engine, tokenizer, params, name
        self.system = system or None
        self.history: list[dict[str, str]] = []
        self.context_length = context_length

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def reset(self) -> None:
        self.history = []

    def _prompt_ids(self) -> tuple[list[int], int]:
        """The prompt's ids, dropping the oldest (user, assistant) turns until it fits; returns (ids, turns dropped)."""
        dropped = 0
        while True:
            ids = encode_prompt(self.tokenizer, self.messages())
            fits = self.context_length is None or len(ids) + self.params.max_new_tokens <= self.context_length
            if fits or len(self.history) <= 1:
                return ids, dropped
            self.history = self.history[2:]
            dropped += 1

    def reply(self, text: str, write) -> tuple[str, int]:
        """The model's reply to the user turn ``text``, written piece by piece with ``write``; (reply, turns dropped)."""
        turn = {"role": "user", "content": text}
        if self.context_length is not None:  # a message that cannot fit even alone is refused; the history stays
            alone = len(encode_prompt(self.tokenizer, self.messages()[: 1 if self.system else 0] + [turn]))
            if alone + self.params.max_new_tokens > self.context_length:
                raise ValueError(f"this message is {alone} tokens with the system message; with {self.params.max_new_tokens} "
                                 f"new tokens that is over the model's context of {self.context_length}")
        self.history.append(turn)
        ids, dropped = self._prompt_ids()
        stream = TextStream(self.tokenizer, stop=self.params.stop, eos_ids=self.engine.eos_ids)

        def on_tokens(rows: list[int], tokens: list[int]) -> None:
            piece = stream.push(tokens[0])
            if piece:
                write(piece)

        out = self.engine.generate([ids], self.params, on_tokens=on_tokens)
        rest = stream.finish(out.texts[0])
        if rest:
            write(rest)
        self.history.append({"role": "assistant", "content": out.texts[0]})
        return out.texts[0], dropped


def chat_loop(session: ChatSession, *, input: TextIO | None = None, output: TextIO | None = None,
              prompt: str = "> ") -> int:
    """Read user turns from ``input`` until ``/exit`` or end of input; print the replies to ``output`` as they are
    generated. Returns the number of replies."""
    input = input or sys.stdin
    output = output or sys.stdout
    interactive = input.isatty() if hasattr(input, "isatty") else False

    def write(text: str) -> None:
        output.write(text)
        output.flush()

    replies = 0
    write(f"chatting with {session.name}; {HELP}\n")
    while True:
        if interactive or prompt:
            write(prompt)
        line = input.readline()
        if not line:  # end of input
            write("\n")
            return replies
        text = line.rstrip("\n")
        if not interactive:
            write(text + "\n")  # echo piped input, so a transcript reads like the session
        if not text.strip():
            continue
        if text.startswith("/"):
            command, _, arg = text.partition(" ")
            if command in ("/exit", "/quit"):
                return replies
            if command == "/reset":
                session.reset()
                write("(conversation reset)\n")
            elif command == "/system":
                session.system = arg.strip() or None
                write(f"(system message: {session.system!r})\n" if session.system else "(system message removed)\n")
            elif command == "/help":
                write(HELP + "\n")
            else:
                write(f"(unknown command {command}; {HELP})\n")
            continue
        try:
            _, dropped = session.reply(text, write)
        except ValueError as err:
            write(f"({err})\n")
            continue
        write("\n")
        if dropped:
            write(f"(the conversation was over the context: its {dropped} oldest exchange(s) were dropped)\n")
        replies += 1
