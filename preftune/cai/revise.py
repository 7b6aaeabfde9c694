"""SL-CAI: sample a response, critique it against a sampled principle, revise it; n rounds (Bai et al. 2022, §3.1).

One chain per prompt, as one growing conversation (the paper's format, with the chat template's roles)::

    [few-shot chains ...]
    user: PROMPT                    assistant: RESPONSE
    user: CRITIQUE REQUEST (p1)     assistant: CRITIQUE 1
    user: REVISION REQUEST (p1)     assistant: REVISION 1
    user: CRITIQUE REQUEST (p2)     ...                       (round 2 critiques revision 1, and so on)

Each stage is one batched :meth:`ChatModel.chat` call over the prompts of a batch; the policy samples the
response, the critic (by default the same model) writes critiques and revisions. The output row of a prompt is an
SFT example (``prompt``, ``completion`` = the final revision) that keeps the whole chain in extra fields
(``initial_response``, ``chain``: one ``{"principle", "critique", "revision"}`` per round), appended as soon as its
batch is done; a rerun skips the prompts already in the output file.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from preftune.cai.constitution import Constitution, Principle
from preftune.data.formats import Prompt
from preftune.errors import PreftuneError
from preftune.generation.chat import ChatModel
from preftune.generation.engine import SamplingParams
from preftune.progress import progress


def as_conversation(prompt: Prompt) -> list[dict[str, str]]:
    """A prompt as a conversation (a plain string becomes one user turn)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def prompt_key(prompt: Prompt) -> str:
    """The identity of a prompt in an output file (what a rerun uses to skip it)."""
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def few_shot_turns(constitution: Constitution, count: int) -> list[dict[str, str]]:
    """The first ``count`` examples of the constitution as conversation turns."""
    turns: list[dict[str, str]] = []
    for ex in constitution.examples[:count]:
        p = constitution.principle(ex.principle)
        turns += [{"role": "user", "content": ex.prompt}, {"role": "assistant", "content": ex.response},
                  {"role": "user", "content": p.critique}, {"role": "assistant", "content": ex.critique},
                  {"role": "user", "content": p.revision}, {"role": "assistant", "content": ex.revision}]
    return turns


def sample_principles(constitution: Constitution, rounds: int, seed: int, index: int) -> list[Principle]:
    """The principles of one prompt's rounds: drawn uniformly, a pure function of (seed, prompt index)."""
    rng = random.Random(seed * 1_000_003 + index)
    return [rng.choice(constitution.principles) for _ in range(rounds)]


@dataclass
class ReviseSettings:
    rounds: int = 1
    few_shot: int = 2  # examples of the constitution shown before each chain
    batch_size: int = 16  # prompts per batch (each stage is one chat call over the batch)
    response_params: SamplingParams | None = None
    critic_params: SamplingParams | None = None
    seed: int = 0


def revise_batch(prompts: Sequence[Prompt], indices: Sequence[int], constitution: Constitution, policy: ChatModel,
                 critic: ChatModel, s: ReviseSettings) -> list[dict]:
    """The chains of ``prompts`` (``indices``: their positions in the prompt set, which seed their principles)."""
    rp = s.response_params or SamplingParams(max_new_tokens=128, temperature=0.7, top_p=0.9, seed=s.seed)
    cp = s.critic_params or SamplingParams(max_new_tokens=128, temperature=0.7, top_p=0.9, seed=s.seed + 1)
    convs = [as_conversation(p) for p in prompts]
    responses = policy.chat(convs, rp)
    shots = few_shot_turns(constitution, s.few_shot)
    history = [shots + c + [{"role": "assistant", "content": r}] for c, r in zip(convs, responses)]
    plan = [sample_principles(constitution, s.rounds, s.seed, i) for i in indices]
    chains: list[list[dict]] = [[] for _ in prompts]
    for r in range(s.rounds):
        for h, ps in zip(history, plan):
            h.append({"role": "user", "content": ps[r].critique})
        critiques = critic.chat(history, cp)
        for h, ps, c in zip(history, plan, critiques):
            h += [{"role": "assistant", "content": c}, {"role": "user", "content": ps[r].revision}]
        revisions = critic.chat(history, cp)
        for j, (h, ps, c, v) in enumerate(zip(history, plan, critiques, revisions)):
            h.append({"role": "assistant", "content": v})
            chains[j].append({"principle": ps[r].id, "critique": c, "revision": v})
    rows = []
    for p, resp, chain in zip(prompts, responses, chains):
        # the newest non-empty text is what SFT learns; which stage it came from is recorded
        final, source = resp, "initial_response"
        for k, step in enumerate(chain):
            if step["revision"].strip():
                final, source = step["revision"], f"revision {k + 1}"
        rows.append({"prompt": p, "completion": final, "completion_from": source, "initial_response": resp,
                     "chain": chain})
    return rows


def done_prompts(path: Path) -> set[str]:
    """Keys of the prompts already written to ``path`` (a rerun skips them). A torn last line (an interrupted
    write) is dropped from the file so the append continues cleanly."""
    if not path.exists():
        return set()
    done, good = set(), []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                path.write_text("".join(good), encoding="utf-8")
                break
            raise PreftuneError(f"{path}, row {i + 1}: not valid JSON; cannot resume onto this file") from None
        if not line.endswith("\n"):
            line += "\n"
        good.append(line)
        done.add(prompt_key(row["prompt"]))
    return done


def run_revisions(prompts: Sequence[Prompt], constitution: Constitution, policy: ChatModel, critic: ChatModel,
                  output: str | Path, settings: ReviseSettings) -> dict:
    """Critique and revise every prompt not yet in ``output``, appending one row per prompt. Returns counts."""
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_prompts(out)
    todo = [(i, p) for i, p in enumerate(prompts) if prompt_key(p) not in done]
    empty = 0
    batches = [todo[s:s + settings.batch_size] for s in range(0, len(todo), settings.batch_size)]
    bar = progress(total=len(todo), desc="cai revise")
    for batch in batches:
        rows = revise_batch([p for _, p in batch], [i for i, _ in batch], constitution, policy, critic, settings)
        with out.open("a", encoding="utf-8") as f:
            for row in rows:
                if not row["completion"].strip():
                    empty += 1  # nothing to learn: kept out of the SFT file, counted
                    continue
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        bar.update(len(batch))
    bar.close()
    return {"prompts": len(prompts), "already_done": len(prompts) - len(todo), "written": len(todo) - empty,
            "empty": empty}
