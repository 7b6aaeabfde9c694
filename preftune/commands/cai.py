"""``preftune cai revise`` (SL-CAI critique → revision data) and ``preftune cai label`` (RL-CAI AI preference labels)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import Field, model_validator

from preftune.config import DECODE_DTYPE_HELP, BaseConfig, Command
from preftune.errors import PreftuneError


def _say(message: str) -> None:
    print(message, file=sys.stderr)


class _ChatOptions(BaseConfig):
    model: str = Field("smollm2-135m-instruct", description="the model that answers the prompts (a local model, or a model name with --base-url)")
    base_url: str | None = Field(None, description="an OpenAI-compatible endpoint for --model (and for the critic/feedback model unless it has its own)")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the endpoint's API key")
    cache_dir: str | None = Field(None, description="remote models: the on-disk response cache")
    constitution: str = Field("default", description="constitution YAML file (default: the project's own, preftune/cai/constitution.yaml)")
    principles: list[str] | None = Field(None, description="use only these principle ids of the constitution")
    prompts_format: str = Field("auto", description="data format of the --prompts (or --pairs) file")
    limit: int | None = Field(None, ge=1, description="use at most this many prompts (or pairs)")
    batch_size: int = Field(16, ge=1, description="prompts (pairs) handled together")
    max_new_tokens: int = Field(128, ge=1, description="tokens per generated reply")
    temperature: float = Field(0.7, ge=0, description="sampling temperature of the replies (0: greedy)")
    top_p: float = Field(0.9, gt=0, le=1)
    seed: int = Field(0)
    device: str | None = Field(None, description="local models: cpu, cuda, auto")
    decode_dtype: str = Field("auto", description=DECODE_DTYPE_HELP)


def _chat(spec: str, config: _ChatOptions, base_url: str | None, cache: dict):
    """One ChatModel per (spec, base URL), so a critic that is the policy is loaded once."""
    from preftune.remote import chat_model

    key = (spec, base_url)
    if key not in cache:
        local = {} if base_url else {"batch_size": config.batch_size, "decode_dtype": config.decode_dtype}
        cache[key] = chat_model(spec, base_url=base_url, device=config.device, api_key_env=config.api_key_env,
                                cache_dir=config.cache_dir, **local)
    return cache[key]


def _prompts(path: str, fmt: str, limit: int | None) -> list:
    from preftune.eval.data import distinct_prompts

    return distinct_prompts(path, fmt, limit=limit)


# -- cai revise ------------------------------------------------------------------------------------------


class ReviseConfig(_ChatOptions):
    prompts: str = Field(..., description="prompt set: a data file whose prompts are used (e.g. red-team prompts)")
    output: str = Field(..., description="JSON-lines SFT dataset: prompt, completion (the final revision), and the chain")
    rounds: int = Field(1, ge=1, description="critique → revision rounds per prompt, each with a freshly drawn principle")
    critic_model: str | None = Field(None, description="the model that critiques and revises (default: --model)")
    critic_base_url: str | None = Field(None, description="an endpoint for --critic-model (default: --base-url)")
    few_shot: int = Field(2, ge=0, description="few-shot chains of the constitution shown before each chain")


def run_revise(config: ReviseConfig) -> int:
    from preftune.cai.constitution import load_constitution
    from preftune.cai.revise import ReviseSettings, run_revisions
    from preftune.generation.engine import SamplingParams

    constitution = load_constitution(config.constitution).select(config.principles)
    if config.few_shot > len(constitution.examples):
        _say(f"{constitution.path}: only {len(constitution.examples)} few-shot examples (asked for {config.few_shot})")
    prompts = _prompts(config.prompts, config.prompts_format, config.limit)
    models: dict = {}
    policy = _chat(config.model, config, config.base_url, models)
    critic = _chat(config.critic_model or config.model, config, config.critic_base_url or config.base_url, models)

    def params(offset: int) -> SamplingParams:
        return SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
                              seed=config.seed + offset, do_sample=config.temperature > 0)

    settings = ReviseSettings(rounds=config.rounds, few_shot=config.few_shot, batch_size=config.batch_size,
                              response_params=params(0), critic_params=params(1), seed=config.seed)
    counts = run_revisions(prompts, constitution, policy, critic, config.output, settings)
    _say(f"cai revise: {counts['written']} chains written to {config.output} ({counts['already_done']} already there"
         + (f", {counts['empty']} left out: every stage came back empty" if counts["empty"] else "") + ")")
    return 0


# -- cai label -------------------------------------------------------------------------------------------


class LabelConfig(_ChatOptions):
    pairs: str | None = Field(None, description="preference pairs to relabel (their order is ignored; agreement with it is reported)")
    prompts: str | None = Field(None, description="or prompts: --num-samples responses each are sampled from --model and every two compared")
    output: str = Field(..., description="JSON-lines preference pairs with a soft label (field 'label' = P(chosen ≻ rejected))")
    num_samples: int = Field(2, ge=2, description="with --prompts: responses sampled per prompt")
    feedback_model: str | None = Field(None, description="the model asked for the labels (default: --model)")
    feedback_base_url: str | None = Field(None, description="an endpoint for --feedback-model (default: --base-url)")
    num_principles: int = Field(2, ge=1, description="principles drawn per pair (the label averages over them)")
    chain_of_thought: bool = Field(False, description="let the feedback model reason before the letter (probabilities clamped to [0.4, 0.6], Bai et al. 2022 §4.1)")
    report: str | None = Field(None, description="also write the label summary (position bias, agreement) as JSON here")

    @model_validator(mode="after")
    def _one_source(self):
        if bool(self.pairs) == bool(self.prompts):
            raise ValueError("give exactly one of --pairs FILE or --prompts FILE")
        return self


def _sampled_pairs(config: LabelConfig, models: dict) -> tuple[list, list[str], list[str], int]:
    """(prompts, responses a, responses b, identical pairs skipped) from --num-samples samples per prompt."""
    from itertools import combinations

    from preftune.cai.revise import as_conversation
    from preftune.generation.engine import SamplingParams

    prompts = _prompts(config.prompts, config.prompts_format, config.limit)
    policy = _chat(config.model, config, config.base_url, models)
    k = config.num_samples
    convs = [as_conversation(p) for p in prompts for _ in range(k)]
    texts = policy.chat(convs, SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                              top_p=config.top_p, seed=config.seed, do_sample=config.temperature > 0))
    ps, a, b, same = [], [], [], 0
    for n, prompt in enumerate(prompts):
        for i, j in combinations(range(k), 2):
            ti, tj = texts[n * k + i], texts[n * k + j]
            if ti.strip() == tj.strip() or not ti.strip() or not tj.strip():
                same += 1  # nothing to compare
                continue
            ps.append(prompt)
            a.append(ti)
            b.append(tj)
    return ps, a, b, same


def run_label(config: LabelConfig) -> int:
    from preftune.cai.constitution import load_constitution
    from preftune.cai.label import LabelSettings, label_pairs, label_rows

    constitution = load_constitution(config.constitution).select(config.principles)
    models: dict = {}
    given = None
    if config.pairs:
        from preftune.data.convert import load_examples

        pairs = load_examples(config.pairs, config.prompts_format, kind="preference", limit=config.limit).examples
        prompts, a, b = [p.prompt for p in pairs], [p.chosen for p in pairs], [p.rejected for p in pairs]
        given = True
        skipped = 0
    else:
        prompts, a, b, skipped = _sampled_pairs(config, models)
        if skipped:
            _say(f"cai label: {skipped} sampled pairs were identical or empty and are not labelled")
    if not prompts:
        raise PreftuneError("cai label: no pairs to label")
    feedback = _chat(config.feedback_model or config.model, config, config.feedback_base_url or config.base_url, models)
    settings = LabelSettings(num_principles=config.num_principles, chain_of_thought=config.chain_of_thought,
                             seed=config.seed, batch_size=config.batch_size)
    report = label_pairs(prompts, a, b, constitution, feedback, settings)
    rows = label_rows(prompts, a, b, report)
    out = Path(config.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary = report.summary()
    summary["unlabelled_identical_or_empty"] = skipped
    if given:
        # the file's own order: does the AI prefer the file's chosen response?
        agree = [0.0 if r["swapped"] else 1.0 for r in rows]
        summary["agreement_with_data"] = sum(agree) / len(agree)
        summary["mean_p_data_chosen"] = sum(lab.prob for lab in report.labels) / len(report.labels)
    if config.report:
        Path(config.report).write_text(json.dumps(summary, indent=2) + "\n")
    _say("cai label: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items())
         + f"; wrote {config.output}")
    return 0


REVISE = Command("cai revise", "SL-CAI: critique and revise responses against a constitution; writes an SFT dataset",
                 ReviseConfig, run_revise,
                 description="For each prompt: sample a response, critique it against a principle drawn from the "
                             "constitution, revise it; --rounds times. Writes prompt + final revision (an SFT dataset "
                             "for preftune sft) with the whole chain; a rerun skips prompts already written.")
LABEL = Command("cai label", "RL-CAI / RLAIF: AI preference labels (soft) from a constitution's multiple-choice question",
                LabelConfig, run_label,
                description="Ask a feedback model the constitution's question for two responses in both orders and "
                            "read the answer from the option letters' log-probs; writes preference pairs with a soft "
                            "label averaged over orders and principles, and reports position bias.")
