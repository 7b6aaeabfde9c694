"""The held-out part of ``preftune reward --eval-fraction F`` on an OpenAssistant file, checked and put beside a
length baseline.

Rebuilds the split of a reward run (its ``config.yaml``: data, read options, ``--eval-fraction``, ``--seed``) with the
trainer's own functions, checks that no message tree (the ``source`` row every example of a tree names: the tree's
root) and no prompt is on both sides, scores "the longer reply is preferred" on the held-out pairs, and reads the
run's held-out pairwise accuracy (``eval.json``), each with a 95 % bootstrap interval.

    python bench/oasst_reward_heldout.py --run runs/rm-oasst [--json bench/results/oasst_reward.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def held_out_report(config) -> dict:
    """Trees, prompts and pairs on each side of the run's split, and the length baseline on the held-out pairs."""
    from preftune.data.formats import prompt_text
    from preftune.eval.stats import rate_with_ci
    from preftune.train.reward import load_training_examples, resolve_objective, split_held_out
    from preftune.data.convert import detect_file_format

    objective = resolve_objective(config, detect_file_format(config.data, config.format))
    examples, _ = load_training_examples(config.data, config, objective)
    train, held = split_held_out(examples, config.eval_fraction, config.seed)
    pairs = held if objective == "bradley_terry" else [p for r in held for p in r.to_pairs()]
    tree = lambda e: (e.source.file, e.source.row)  # noqa: E731
    train_trees, held_trees = {tree(e) for e in train}, {tree(e) for e in held}
    train_prompts, held_prompts = {prompt_text(e.prompt) for e in train}, {prompt_text(e.prompt) for e in held}
    longer = [1.0 if len(p.chosen) > len(p.rejected) else 0.5 if len(p.chosen) == len(p.rejected) else 0.0 for p in pairs]
    return {"objective": objective, "train_trees": len(train_trees), "held_out_trees": len(held_trees),
            "trees_on_both_sides": len(train_trees & held_trees), "prompts_on_both_sides": len(train_prompts & held_prompts),
            "train_examples": len(train), "held_out_pairs": len(pairs),
            "longer_reply_baseline": rate_with_ci(longer).as_dict()}


def main(argv=None) -> int:
    from preftune.commands.reward import RewardTrainConfig
    from preftune.eval.stats import rate_with_ci

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="the reward run folder (config.yaml, eval.json)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    run = Path(args.run)
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    # config.yaml also records what the run decided (its precision policy): keep the options the command takes
    config = RewardTrainConfig(**{k: v for k, v in recorded.items() if k in RewardTrainConfig.model_fields})
    report = held_out_report(config)
    if (run / "eval.json").is_file():
        ev = json.loads((run / "eval.json").read_text())
        correct = round(ev["accuracy"] * ev["pairs"])
        report["reward_model"] = {"pairs": ev["pairs"], "accuracy": rate_with_ci([1.0] * correct + [0.0] * (ev["pairs"] - correct)).as_dict(),
                                  "ece": ev.get("ece")}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
