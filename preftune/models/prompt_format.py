"""How a plain-text prompt is shown to a model: one rule for the whole pipeline, decided once, carried with the model.

The rule: a plain prompt becomes one user turn of the model's chat template when its tokenizer has one, unless the
user turns that off (``--no-chat-template``). A conversation always goes through the template. Training,
sampling, scoring and evaluation must all present a prompt the same way: a model fine-tuned on raw prompts and
then sampled with templated ones (or the reverse) is asked in a format it was never trained on.

The decision is made by the first stage (SFT, DPO, reward training, RL from a base model), attached to the
tokenizer it loaded, recorded in its run folder's ``config.yaml`` and saved beside the model
(``preftune_prompt.json``, by :func:`write_prompt_format`). Every later stage loads its model's tokenizer with
:func:`preftune.models.loading.load_tokenizer`, which reads the file back, so a DPO run from an SFT checkpoint, a
reward model used by PPO, and ``preftune eval`` of a trained model present prompts exactly as training did.
A user who asks for the other choice than the one recorded is warned, and gets what they asked for.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PROMPT_FORMAT_FILE = "preftune_prompt.json"
_ATTRIBUTE = "preftune_chat_template"  # set on a tokenizer once its model's choice is known


def has_chat_template(tokenizer) -> bool:
    return getattr(tokenizer, "chat_template", None) is not None


def uses_chat_template(tokenizer) -> bool:
    """Do plain prompts go through this tokenizer's chat template? The choice recorded with its model, else the
    rule's default (when it has a template)."""
    recorded = getattr(tokenizer, _ATTRIBUTE, None)
    return has_chat_template(tokenizer) if recorded is None else bool(recorded)


def recorded_chat_template(folder: str | Path | None) -> bool | None:
    """The choice saved beside a model (``preftune_prompt.json``), or None for a folder without one / a hub id."""
    if folder is None:
        return None
    path = Path(str(folder)).expanduser() / PROMPT_FORMAT_FILE
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())["chat_template"]
    except (json.JSONDecodeError, KeyError, TypeError):
        from preftune.errors import PreftuneError

        raise PreftuneError(f"{path}: not a preftune prompt-format file (expected {{\"chat_template\": true|false}})") from None
    return bool(value)


def attach_recorded(tokenizer, folder: str | Path | None):
    """Give a freshly loaded tokenizer the choice recorded with its model, if any (``load_tokenizer`` calls this)."""
    recorded = recorded_chat_template(folder)
    if recorded is not None:
        setattr(tokenizer, _ATTRIBUTE, recorded)
    return tokenizer


def decide_chat_template(tokenizer, requested: bool | None, *, who: str = "preftune") -> bool:
    """Settle the choice for a stage: the user's ``requested`` value when given, else the one recorded with the
    model (already attached by ``load_tokenizer``), else the rule's default. The result is attached to ``tokenizer``
    so that every encoding of this stage follows it, and returned (for the run's config).

    Asking for the opposite of what the model was trained with is allowed (a user may know better) but warned about,
    naming both choices.
    """
    recorded = getattr(tokenizer, _ATTRIBUTE, None)
    if requested is None:
        choice = uses_chat_template(tokenizer)
    else:
        choice = bool(requested)
        if recorded is not None and bool(recorded) != choice:
            trained = "through the chat template" if recorded else "raw, without the chat template"
            asked = "through" if choice else "without"
            print(f"{who}: warning: this model was trained with plain prompts {trained} ({PROMPT_FORMAT_FILE}), but "
                  f"--{'' if choice else 'no-'}chat-template asks for prompts {asked} it; it will see prompts in a "
                  "format it was not trained on", file=sys.stderr)
    if choice and not has_chat_template(tokenizer):
        from preftune.errors import PreftuneError

        raise PreftuneError(f"{who}: --chat-template was asked for, but the tokenizer has no chat template")
    setattr(tokenizer, _ATTRIBUTE, choice)
    return choice


def write_prompt_format(folder: str | Path, tokenizer) -> Path:
    """Save the tokenizer's choice beside a saved model, for the stages that start from it."""
    path = Path(folder) / PROMPT_FORMAT_FILE
    path.write_text(json.dumps({"chat_template": uses_chat_template(tokenizer)}) + "\n")
    return path
