"""The ``preftune`` console script.

One table of commands; each names the module attribute holding its :class:`preftune.config.Command`,
imported only when that command runs (so ``preftune --help`` stays fast).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence

from preftune.errors import PreftuneError

# name -> ("module:attribute", one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data inspect": ("preftune.data.inspect:COMMAND", "Count rows, pairs and token lengths of a data file, with one example"),
    "data mix": ("preftune.data.mix:COMMAND", "Mix data sources into one training file with a fixed held-out part of each"),
    "data safety-pairs": ("preftune.commands.safety:COMMAND", "Refusal contrast pairs: refuse harmful prompts, answer benign ones"),
    "sft": ("preftune.commands.offline:SFT", "Instruction tuning (SFT) on demonstrations, full or LoRA"),
    "dpo": ("preftune.commands.offline:DPO", "Preference optimisation without RL: DPO, IPO, cDPO, SimPO, ORPO, CPO, KTO, ..."),
    "reward": ("preftune.commands.reward:TRAIN", "Train a reward model (Bradley-Terry, margins, Plackett-Luce) or a rule model"),
    "reward-eval": ("preftune.commands.reward:EVAL", "Pairwise accuracy, calibration, per-rule accuracy and a histogram of a reward model"),
    "score": ("preftune.commands.reward:SCORE", "Write the reward of every (prompt, response) of a data file as JSON lines"),
    "generate": ("preftune.commands.evaluate:GENERATE", "Generate responses for a prompt set with a model"),
    "eval": ("preftune.commands.evaluate:EVAL", "Win rates with judges, text metrics, safety and bias suites, and an HTML report"),
    "frontier": ("preftune.commands.evaluate:FRONTIER", "Reward against KL(policy || reference) for several checkpoints"),
    "ppo": ("preftune.commands.online:PPO", "RLHF with PPO against a reward, with a per-token KL penalty (and PPO-ptx)"),
    "rloo": ("preftune.commands.online:RLOO", "REINFORCE leave-one-out: k samples per prompt, no critic"),
    "grpo": ("preftune.commands.online:GRPO", "Group relative policy optimisation: group-normalised advantages, KL in the loss"),
    "reinforce": ("preftune.commands.online:REINFORCE", "REINFORCE with a baseline"),
    "best-of-n": ("preftune.commands.online:BEST_OF_N", "Sample N responses per prompt and keep the best by reward"),
    "rejection-sampling": ("preftune.commands.online:REJECTION_SAMPLING", "Sample, rank with the reward, fine-tune on the best (Llama 2)"),
    "annotate serve": ("preftune.commands.annotate:SERVE", "Serve the annotation web app: pairwise, ranking, correction, rating and rule feedback"),
    "annotate add-annotator": ("preftune.commands.annotate:ADD_ANNOTATOR", "Add an annotator to a feedback database and print their private link"),
    "annotate stats": ("preftune.commands.annotate:STATS", "Counts, agreement (Cohen, Fleiss, Krippendorff) and position bias of the feedback"),
    "annotate export": ("preftune.commands.annotate:EXPORT", "Export feedback for the trainers and for 'preftune eval --judges human:FILE'"),
    "redteam": ("preftune.commands.redteam:REDTEAM", "Red teaming with a language model: attacker test cases, target answers, failures"),
    "overoptimization": ("preftune.commands.overoptimization:OVEROPTIMIZATION", "Reward over-optimisation: gold and proxy reward against KL (best-of-n, RLOO)"),
    "pipeline": ("preftune.pipeline:PIPELINE", "Run a recipe: preftune commands in order, resuming after the last finished stage"),
    "serve": ("preftune.commands.serve:SERVE", "An OpenAI-compatible server for a model (chat, completions, streaming, log-probs)"),
    "chat": ("preftune.commands.serve:CHAT", "Talk to a model in the terminal (history, /reset, /system, streamed replies)"),
    "cai revise": ("preftune.commands.cai:REVISE", "SL-CAI: critique and revise responses against a constitution; writes an SFT dataset"),
    "cai label": ("preftune.commands.cai:LABEL", "RL-CAI / RLAIF: soft AI preference labels from a constitution, both orders"),
    "demo": ("preftune.commands.demo:DEMO", "The whole pipeline on the default model and the starter dataset, end to end"),
}


def _available() -> dict[str, tuple[str, str]]:
    """Commands whose module exists in this install."""
    out = {}
    for name, (target, help_) in COMMANDS.items():
        module = target.split(":")[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            out[name] = (target, help_)
    return out


def _main_help(commands: dict[str, tuple[str, str]]) -> str:
    width = max(len(n) for n in commands)
    lines = [
        "usage: preftune COMMAND [--config FILE.yaml] [--option value ...]",
        "",
        "The post-training alignment pipeline: SFT, reward models, RLHF, DPO and its family, evaluation.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in commands.items()]
    lines += ["", "Run 'preftune COMMAND --help' for the options of one command."]
    return "\n".join(lines)


def _resolve(argv: list[str], commands: dict[str, tuple[str, str]]) -> tuple[str | None, list[str]]:
    for width in (2, 1):
        name = " ".join(argv[:width])
        if len(argv) >= width and name in commands:
            return name, argv[width:]
    return None, argv


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _available()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_main_help(commands))
        return 0
    if argv[0] == "--version":
        from preftune import __version__

        print(f"preftune {__version__}")
        return 0
    name, rest = _resolve(argv, commands)
    if name is None:
        import difflib

        groups = {n.split()[0] for n in commands}
        if argv[0] in groups:
            subs = sorted(n for n in commands if n.split()[0] == argv[0])
            print(f"preftune: '{argv[0]}' needs a sub-command: {', '.join(subs)}", file=sys.stderr)
            return 2
        close = difflib.get_close_matches(argv[0], list(commands) + list(groups), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        print(f"preftune: unknown command '{argv[0]}'{hint} (see 'preftune --help')", file=sys.stderr)
        return 2
    from preftune.config import parse_args, print_help, wants_help

    module_name, attr = commands[name][0].split(":")
    command = getattr(importlib.import_module(module_name), attr)
    if wants_help(rest):
        print_help(command)
        return 0
    try:
        config = parse_args(command, rest)
        from preftune.distributed import launch_requested, relaunch

        if launch_requested(config):  # --accelerate-config / --num-processes: the same command under accelerate launch
            return relaunch(argv, config.accelerate_config, config.num_processes)
        return int(command.run(config) or 0)
    except PreftuneError as err:
        print(f"preftune {name}: error: {err}", file=sys.stderr)
        if os.environ.get("PREFTUNE_DEBUG"):
            raise
        return 2


if __name__ == "__main__":
    sys.exit(main())
