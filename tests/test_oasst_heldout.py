"""The held-out part of `preftune reward --eval-fraction 0.2` on the real OpenAssistant file: whole message trees
(no tree and no prompt on both sides), and the length baseline that BENCHMARKS.md puts beside the reward model."""

from __future__ import annotations

from preftune.commands.reward import RewardTrainConfig
from preftune.data.formats import prompt_text
from preftune.train.reward import load_training_examples, split_held_out
from tests.conftest import shared_data


def test_real_oasst1_held_out_by_tree_and_the_longer_reply_baseline():
    path = str(shared_data("oasst1/oasst1_en_validation.jsonl.gz"))
    config = RewardTrainConfig(data=path, skip_bad_rows=True, eval_fraction=0.2)
    examples, _ = load_training_examples(path, config, "bradley_terry")
    train, held = split_held_out(examples, config.eval_fraction, config.seed)
    trees = lambda side: {e.source.row for e in side}  # noqa: E731  (every example names its tree's root row)
    assert (len(trees(train)), len(trees(held)), len(trees(train) & trees(held))) == (145, 36, 0)
    assert not {prompt_text(e.prompt) for e in train} & {prompt_text(e.prompt) for e in held}
    assert (len(train), len(held)) == (804, 181)
    longer = sum(len(p.chosen) > len(p.rejected) for p in held)
    assert (longer, sum(len(p.chosen) == len(p.rejected) for p in held)) == (115, 0)  # 115 / 181 = 0.635
