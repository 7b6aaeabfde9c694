"""``preftune demo``: the whole pipeline on the default model and the starter dataset, end to end.

It is the recipe ``preftune/recipes/demo.yaml`` (``--quick``: ``demo-quick.yaml``) run by ``preftune pipeline``: each
stage is the ordinary command a user would type, printed before it runs, so the demo doubles as a walk-through.
Run again, it continues after the last finished stage.
"""

from __future__ import annotations

from pydantic import Field

from preftune.config import BaseConfig, Command


class DemoConfig(BaseConfig):
    model: str = Field("smollm2-135m-instruct", description="the base model")
    quick: bool = Field(False, description="the smaller recipe (demo-quick): a few minutes on a 2-core CPU")
    output_dir: str | None = Field(None, description="one run folder per stage goes under here (default: runs/demo or runs/demo-quick)")
    steps: int | None = Field(None, ge=1, description="optimizer steps of each offline training stage (default: the recipe's)")
    ppo_steps: int | None = Field(None, ge=1, description="PPO steps (default: the recipe's)")
    eval_prompts: int | None = Field(None, ge=1, description="held-out prompts (starter:test) in the evaluation (default: the recipe's)")
    max_new_tokens: int | None = Field(None, ge=1, description="response length in sampling and evaluation (default: the recipe's)")
    heldout: bool | None = Field(None, description="score the held-out pairs (starter:test) after SFT, reward and DPO "
                                                   "training (default: the recipe's: on in the full demo, off with --quick)")
    redo: list[str] | str = Field(default_factory=list, description="run this stage and every later one again")


def run(config: DemoConfig) -> int:
    from preftune.pipeline import PipelineConfig
    from preftune.pipeline import run as run_pipeline

    overrides = {k: getattr(config, k) for k in ("model", "steps", "ppo_steps", "eval_prompts", "max_new_tokens")}
    assignments = [f"{k}={v}" for k, v in overrides.items() if v is not None]
    if config.heldout is not None:
        assignments.append(f"heldout={'starter:test' if config.heldout else 'null'}")
    code = run_pipeline(PipelineConfig(recipe="demo-quick" if config.quick else "demo", output_dir=config.output_dir,
                                       set=assignments, redo=config.redo))
    root = config.output_dir or ("runs/demo-quick" if config.quick else "runs/demo")
    print(f"The demo is complete. Reports: {', '.join(f'{root}/eval_{n}/report.html' for n in ('dpo', 'ppo', 'best_of_n'))}")
    return code


DEMO = Command("demo", "The whole pipeline on the default model and the starter dataset, end to end", DemoConfig, run,
               description=__doc__.split("\n\n")[0])
