"""``preftune chat``: the terminal chat driven from stdin on a tiny model — history, /system, /reset, /exit, replies
streamed piece by piece, the oldest turns dropped when the context is full — and text deltas from tokens."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from preftune.data.tokenize import encode_prompt
from preftune.generation.engine import HFEngine, SamplingParams
from preftune.generation.stream import TextStream
from preftune.serve.terminal import ChatSession, chat_loop

REPO = Path(__file__).resolve().parents[1]
PARAMS = SamplingParams(max_new_tokens=10, temperature=1.0, seed=11)


@pytest.fixture(scope="module")
def tiny():
    from preftune.models.loading import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer("chatml")
    return tiny_model(len(tokenizer)), tokenizer


def reference(tiny, messages) -> str:
    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer, decode_dtype="float32", show_progress=False)
    return engine.generate([encode_prompt(tokenizer, messages)], PARAMS).texts[0]


class Recorder(io.StringIO):
    def __init__(self):
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_chat_history_system_reset_exit(tiny):
    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer, decode_dtype="float32", show_progress=False)
    session = ChatSession(engine, tokenizer, PARAMS, name="tiny")
    seen: list[list[int]] = []
    generate = engine.generate
    engine.generate = lambda ids, params, **kw: seen.append(ids[0]) or generate(ids, params, **kw)
    lines = "How do I bake bread?\n/system Be brief.\nAnd then?\n/reset\nHello\n/bogus\n\n/exit\nnever read\n"
    out = Recorder()
    replies = chat_loop(session, input=io.StringIO(lines), output=out, prompt="> ")
    assert replies == 3

    r1 = reference(tiny, [{"role": "user", "content": "How do I bake bread?"}])
    r2 = reference(tiny, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I bake bread?"},
                          {"role": "assistant", "content": r1}, {"role": "user", "content": "And then?"}])
    r3 = reference(tiny, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}])
    # what the model was shown: the conversation so far through the chat template, each turn
    assert seen == [encode_prompt(tokenizer, [{"role": "user", "content": "How do I bake bread?"}]),
                    encode_prompt(tokenizer, [{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "How do I bake bread?"},
                                              {"role": "assistant", "content": r1}, {"role": "user", "content": "And then?"}]),
                    encode_prompt(tokenizer, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}])]
    text = out.getvalue()
    head = "chatting with tiny; commands: /reset"
    assert text.startswith(head)
    body = text.split("\n", 1)[1]
    assert body == (f"> How do I bake bread?\n{r1}\n> /system Be brief.\n(system message: 'Be brief.')\n"
                    f"> And then?\n{r2}\n> /reset\n(conversation reset)\n> Hello\n{r3}\n"
                    "> /bogus\n(unknown command /bogus; commands: /reset (forget the conversation), /system TEXT (set the "
                    "system message; /system alone removes it), /exit (quit), /help)\n> \n> /exit\n")
    # streamed: the first reply arrived in several writes, not one
    start = out.writes.index("How do I bake bread?\n") + 1
    pieces = out.writes[start:out.writes.index("\n", start)]
    assert "".join(pieces) == r1 and len(pieces) >= 3
    assert session.history == [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": r3}]


def test_chat_drops_oldest_turns_when_the_context_is_full(tiny):
    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer, decode_dtype="float32", show_progress=False)
    session = ChatSession(engine, tokenizer, PARAMS, context_length=60)
    out = io.StringIO()
    chat_loop(session, input=io.StringIO("How do I bake bread?\nAnd then what?\n" + "word " * 80 + "\n"), output=out, prompt="")
    text = out.getvalue()
    assert "(the conversation was over the context: its 1 oldest exchange(s) were dropped)" in text
    assert "new tokens that is over the model's context of 60)" in text  # a single message too long: refused, not crashed
    assert session.history[0]["content"] == "And then what?"


def test_chat_command_from_a_pipe(tiny, tmp_path):
    model, tokenizer = tiny
    folder = tmp_path / "tiny-model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFTUNE_NO_PROGRESS": "1"}
    done = subprocess.run([sys.executable, "-m", "preftune.cli", "chat", str(folder), "--temperature", "1", "--seed", "11",
                           "--max-new-tokens", "10", "--top-p", "1", "--decode-dtype", "float32"],
                          input="How do I bake bread?\n/exit\n", capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    r1 = reference(tiny, [{"role": "user", "content": "How do I bake bread?"}])
    assert f"> How do I bake bread?\n{r1}\n> /exit\n" in done.stdout


def test_text_stream_holds_back_stop_prefixes_and_partial_characters(chatml_tokenizer):
    tok = chatml_tokenizer
    ids = tok("Hello world! STOP here", add_special_tokens=False)["input_ids"]
    stream = TextStream(tok, stop=["STOP"], eos_ids=[tok.eos_token_id])
    shown = "".join(stream.push(t) for t in ids)
    assert shown == "Hello world! "  # "S", "ST", "STO" were held back: the stop string was coming
    assert stream.finish("Hello world! ") == ""
    # a multi-byte character split over byte tokens is shown whole, never as U+FFFD
    ids = tok("é!", add_special_tokens=False)["input_ids"]
    stream = TextStream(tok)
    pieces = [stream.push(t) for t in ids]
    assert "".join(pieces) == "é!" and all("\ufffd" not in p for p in pieces)
    # EOS ends the text; finish() adds what the engine's final text has beyond what was shown
    stream = TextStream(tok, eos_ids=[tok.eos_token_id])
    assert stream.push(tok.eos_token_id) == "" and stream.finish("") == ""


def test_engine_on_tokens_reports_every_token_and_top_logprobs(tiny):
    """The streaming hook sees exactly the returned tokens, per prompt, across several batches; top_logprobs are
    sorted, hold the sampled token at greedy, and agree with the sampled log-probs."""
    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer, batch_size=2, decode_dtype="float32", show_progress=False)
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": q}]) for q in ("Hello", "How do I bake bread?", "Thanks!")]
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}

    def on_tokens(indices, tokens):
        for i, t in zip(indices, tokens):
            seen[i].append(t)

    for params in (SamplingParams(max_new_tokens=7, do_sample=False, top_logprobs=4),
                   SamplingParams(max_new_tokens=7, temperature=0.8, seed=2, top_logprobs=4)):
        for v in seen.values():
            v.clear()
        out = engine.generate(prompts, params, on_tokens=on_tokens)
        assert [seen[i] for i in range(3)] == out.sequences
        for seq, lps, tops in zip(out.sequences, out.logprobs, out.top_logprobs):
            assert len(tops) == len(seq) and all(len(t) == 4 for t in tops)
            for token, lp, top in zip(seq, lps, tops):
                values = [v for _, v in top]
                assert values == sorted(values, reverse=True)
                if token in dict(top):
                    assert dict(top)[token] == pytest.approx(lp, abs=1e-5)
                if params.greedy:
                    assert top[0][0] == token
    assert engine.generate(prompts[:1], SamplingParams(max_new_tokens=2)).top_logprobs == [[]]
