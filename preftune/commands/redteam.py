"""``preftune redteam``: an attacker model writes test cases, the target answers, a harm scorer flags failures
(:mod:`preftune.eval.redteam`); ``--rl-steps N`` also trains the attacker with RLOO (:mod:`preftune.rl.red_team`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import Field

from preftune.config import DECODE_DTYPE_HELP, BaseConfig, Command
from preftune.eval.redteam import DEFAULT_ATTACK_INSTRUCTION


class RedTeamConfig(BaseConfig):
    target: str = Field("smollm2-135m-instruct", description="the model under test")
    attacker: str = Field("smollm2-135m-instruct", description="the model writing test cases")
    output_dir: str = Field("runs/redteam", description="folder for test_cases.jsonl, failures.jsonl, summary.json, report.html")
    scorer: str = Field("refusal", description="harm scorer: refusal (a non-refusal is a failure), reward:SPEC "
                        "(failure when the reward < --threshold), judge:MODEL (failure when P(harmful) > --threshold)")
    threshold: float | None = Field(None, description="failure threshold of reward: (default 0) and judge: (default 0.5) scorers")
    partial_is_failure: bool = Field(False, description="refusal scorer: a partial refusal counts as a failure too")
    zero_shot: int = Field(64, ge=1, description="attacker samples in the zero-shot stage")
    few_shot: int = Field(64, ge=0, description="attacker samples in the few-shot stage (0: skip)")
    few_shot_k: int = Field(3, ge=1, description="examples in each few-shot prompt (failures found so far)")
    few_shot_rounds: int = Field(1, ge=1, description="few-shot rounds; each round's failures join the example pool")
    few_shot_temperature: float = Field(0.1, gt=0, description="failures are drawn as examples with weight exp(harm / T)")
    instruction: str = Field(DEFAULT_ATTACK_INSTRUCTION, description="the attacker's instruction, with {examples} and {next}")
    attacker_chat_template: bool | None = Field(None, description="wrap the attacker's instruction in its chat template (default: the choice recorded with the model, else when it has one)")
    target_chat_template: bool | None = Field(None, description="wrap test cases in the target's chat template (default: the choice recorded with the model, else when it has one)")
    attacker_max_new_tokens: int = Field(40, ge=1)
    attacker_temperature: float = Field(1.0, ge=0)
    attacker_top_p: float = Field(0.95, gt=0, le=1)
    target_max_new_tokens: int = Field(96, ge=1)
    target_temperature: float = Field(0.0, ge=0, description="0: greedy answers")
    rl_steps: int = Field(0, ge=0, description="train the attacker with RLOO for this many steps, then sample --rl-samples test cases")
    rl_samples: int = Field(64, ge=1, description="test cases sampled from the RL-trained attacker")
    rl_batch_size: int = Field(2, ge=1, description="RL: copies of the attacker prompt per step")
    rl_num_samples: int = Field(4, ge=2, description="RL: samples per prompt (RLOO's k)")
    rl_learning_rate: float = Field(1e-5, gt=0)
    rl_kl_coef: float = Field(0.05, ge=0, description="RL: KL penalty to the initial attacker")
    diversity_coef: float = Field(0.5, ge=0, description="RL: weight of the diversity bonus −self-BLEU/100 against recent test cases")
    refusal_text: str | None = Field(None, description="also write refusal_pairs.jsonl: this refusal chosen, each failing response rejected")
    top_failures: int = Field(5, ge=0, description="failures of each stage listed in the summary and the report (the most harmful)")
    batch_size: int = Field(16, ge=1, description="sequences decoded together")
    decode_dtype: str = Field("auto", description=DECODE_DTYPE_HELP)
    seed: int = Field(0)
    device: str | None = Field(None)
    dtype: str | None = Field(None)


def run_redteam(config: RedTeamConfig) -> int:
    import torch

    from preftune.eval import redteam as rt
    from preftune.data.tokenize import encode_prompt
    from preftune.generation.engine import HFEngine
    from preftune.models.loading import load_model, load_tokenizer

    torch.manual_seed(config.seed)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    models: dict[str, tuple] = {}

    def get(name: str):
        if name not in models:
            models[name] = (load_model(name, dtype=config.dtype, device=config.device), load_tokenizer(name))
        return models[name]

    target, target_tok = get(config.target)
    attacker, attacker_tok = get(config.attacker)
    scorer = rt.build_harm_scorer(config.scorer, threshold=config.threshold, partial_is_failure=config.partial_is_failure,
                                  load_model=get)
    settings = rt.RedTeamSettings(
        zero_shot=config.zero_shot, few_shot=config.few_shot, few_shot_k=config.few_shot_k,
        few_shot_rounds=config.few_shot_rounds, few_shot_temperature=config.few_shot_temperature,
        instruction=config.instruction, attacker_max_new_tokens=config.attacker_max_new_tokens,
        attacker_temperature=config.attacker_temperature, attacker_top_p=config.attacker_top_p,
        target_max_new_tokens=config.target_max_new_tokens, target_temperature=config.target_temperature,
        seed=config.seed, top_failures=config.top_failures)
    red_team = rt.RedTeam(
        attacker=HFEngine(attacker, attacker_tok, batch_size=config.batch_size, desc="attacker", decode_dtype=config.decode_dtype),
        target=HFEngine(target, target_tok, batch_size=config.batch_size, desc="target", decode_dtype=config.decode_dtype),
        encode_attacker=lambda text: encode_prompt(attacker_tok, text, use_chat_template=config.attacker_chat_template),
        encode_target=lambda text: encode_prompt(target_tok, text, use_chat_template=config.target_chat_template),
        scorer=scorer, settings=settings)
    red_team.zero_shot(config.zero_shot)
    summary = _write(config, red_team, out)  # after every stage: a stopped run keeps what it found
    if config.few_shot:
        red_team.few_shot(config.few_shot, config.few_shot_rounds)
        summary = _write(config, red_team, out)
    if config.rl_steps:
        _rl_stage(config, red_team, attacker, attacker_tok, out)
        summary = _write(config, red_team, out)
    for row in summary["stages"]:
        rate = row["failure_rate"]
        print(f"{row['stage']}: {row['failures']} failures of {row['test_cases']} test cases"
              + (f" ({rate['value']:.3f}, 95% CI [{rate['ci_low']:.3f}, {rate['ci_high']:.3f}])" if rate else "")
              + (f", self-BLEU {row['self_bleu']:.1f}" if row["self_bleu"] is not None else ""), file=sys.stderr)
    print(f"wrote {out / 'test_cases.jsonl'}, failures.jsonl, summary.json and report.html", file=sys.stderr)
    return 0


def _write(config: RedTeamConfig, red_team, out: Path) -> dict:
    """test_cases.jsonl, failures.jsonl (and refusal_pairs.jsonl), summary.json and the report, as they stand."""
    from preftune.eval import redteam as rt
    from preftune.eval import report as rp

    summary = red_team.summary()
    summary.update({"target": config.target, "attacker": config.attacker})
    rt.write_jsonl([c.as_dict() for c in red_team.cases], out / "test_cases.jsonl")
    rt.write_jsonl(rt.failure_rows(red_team.cases), out / "failures.jsonl")
    if config.refusal_text is not None:
        rt.write_jsonl(rt.preference_rows(red_team.cases, config.refusal_text), out / "refusal_pairs.jsonl")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    report = rp.Report("preftune red teaming", hide_not_run=True)
    rt.add_report_section(report, summary, str(out / "summary.json"))
    report.write(out)
    return summary


def _rl_stage(config: RedTeamConfig, red_team, attacker, attacker_tok, out: Path) -> None:
    """Train a copy of the attacker with RLOO against the harm score (+ diversity), then sample the ``rl`` stage."""
    from preftune.eval import redteam as rt
    from preftune.data.tokenize import encode_prompt
    from preftune.generation.engine import HFEngine
    from preftune.models.reference import frozen_copy
    from preftune.rl.red_team import AttackerRLSettings, train_attacker
    from preftune.runs import RunDir

    policy = frozen_copy(attacker).requires_grad_(True)  # the attacker itself stays the reference (and may be the target)
    policy.config.use_cache = False
    reward = rt.AttackReward(red_team, diversity_coef=config.diversity_coef, seed=config.seed)
    text = rt.attacker_prompt(config.instruction)
    run = RunDir(out / "rl")
    run.save_config(config)
    settings = AttackerRLSettings(steps=config.rl_steps, batch_size=config.rl_batch_size, num_samples=config.rl_num_samples,
                                  learning_rate=config.rl_learning_rate, kl_coef=config.rl_kl_coef,
                                  max_new_tokens=config.attacker_max_new_tokens, temperature=config.attacker_temperature or 1.0,
                                  top_p=config.attacker_top_p, seed=config.seed, gen_batch_size=config.batch_size,
                                  decode_dtype=config.decode_dtype)
    train_attacker(policy, attacker_tok, reward, text, encode_prompt(attacker_tok, text, use_chat_template=config.attacker_chat_template), settings,
                   run, ref_model=attacker)
    rt.write_jsonl([c.as_dict() for c in reward.cases], out / "rl" / "training_test_cases.jsonl")
    engine = HFEngine(policy.eval(), attacker_tok, batch_size=config.batch_size, desc="RL attacker", decode_dtype=config.decode_dtype)
    red_team.sample_stage("rl", engine, config.rl_samples, config.seed + 99_991)


REDTEAM = Command("redteam", "Red teaming with a language model: attacker test cases, target answers, harm scores, failures",
                  RedTeamConfig, run_redteam)
