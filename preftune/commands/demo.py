"""``preftune demo``: the whole pipeline on the default model and the starter dataset, end to end.

Each stage is the ordinary command a user would type (printed before it runs), so the demo doubles as a
walk-through: inspect the data, SFT, a reward model, DPO from the SFT model, a short PPO run against the
reward model, and an evaluation of DPO and PPO against SFT with an HTML report.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from pydantic import Field

from preftune.config import BaseConfig, Command
from preftune.errors import PreftuneError


class DemoConfig(BaseConfig):
    model: str = Field("smollm2-135m-instruct", description="the base model")
    output_dir: str = Field("runs/demo", description="one run folder per stage goes under here")
    steps: int = Field(16, ge=1, description="optimizer steps of each training stage")
    ppo_steps: int = Field(4, ge=0, description="PPO steps (0: skip PPO)")
    eval_prompts: int = Field(16, ge=1, description="held-out prompts (starter:test) in the final evaluation")
    max_new_tokens: int = Field(64, ge=1, description="response length in PPO and evaluation")


def _stage(title: str, argv: list[str]) -> None:
    from preftune.cli import main

    print(f"\n=== {title}\n$ preftune {shlex.join(argv)}", flush=True)
    start = time.time()
    code = main(argv)
    if code != 0:
        raise PreftuneError(f"the demo stopped: 'preftune {argv[0]}' exited with status {code}")
    print(f"--- {title}: done in {time.time() - start:.0f} s", flush=True)


def run(config: DemoConfig) -> int:
    out = Path(config.output_dir)
    sft, rm, dpo, ppo, ev = (str(out / name) for name in ("sft", "reward", "dpo", "ppo", "eval"))
    steps = str(config.steps)
    _stage("0. the data", ["data", "inspect", "starter", "--tokenizer", config.model])  # token counts in the model's own
    _stage("1. instruction tuning (SFT, LoRA, merged)",
           ["sft", "--model", config.model, "--data", "starter:train", "--lora", "--merge", "--max-steps", steps,
            "--batch-size", "8", "--output-dir", sft])
    _stage("2. a Bradley-Terry reward model",
           ["reward", "--model", config.model, "--data", "starter:train", "--eval-data", "starter:test", "--max-steps", steps,
            "--batch-size", "8", "--learning-rate", "2e-5", "--output-dir", rm])
    _stage("3a. DPO from the SFT model (LoRA, merged)",
           ["dpo", "--model", f"{sft}/final", "--data", "starter:train", "--lora", "--merge", "--max-steps", steps,
            "--batch-size", "8", "--output-dir", dpo])
    candidates = [("dpo", f"{dpo}/final")]
    runs = [sft, dpo]
    if config.ppo_steps:
        _stage("3b. RLHF: PPO from the SFT model against the reward model",
               ["ppo", "--model", f"{sft}/final", "--reward", f"{rm}/final", "--prompts", "starter:train", "--lora",
                "--steps", str(config.ppo_steps), "--batch-size", "8", "--minibatch-size", "8",
                "--max-new-tokens", str(config.max_new_tokens), "--sample-every", "1", "--output-dir", ppo])
        candidates.append(("ppo", f"{ppo}/final"))
        runs.append(ppo)
    for name, model in candidates:
        _stage(f"4. evaluation: {name} against SFT on held-out prompts",
               ["eval", "--model", model, "--baseline", f"{sft}/final", "--prompts", "starter:test",
                "--limit", str(config.eval_prompts), "--max-new-tokens", str(config.max_new_tokens),
                "--judges", json.dumps([f"reward:{rm}/final"]), "--runs", json.dumps(runs), "--output-dir", f"{ev}-{name}"])
    print(f"\nThe demo is complete. Reports: {', '.join(f'{ev}-{n}/report.html' for n, _ in candidates)}")
    return 0


DEMO = Command("demo", "The whole pipeline on the default model and the starter dataset, end to end", DemoConfig, run)
