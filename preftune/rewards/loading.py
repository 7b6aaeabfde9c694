"""One way to get a reward function from what a user names: a reward-model or rule-model folder, a combination
file, ``module:function``, or a callable (:func:`load_reward`). It sits above the kinds it builds (:mod:`.base`,
:mod:`.model`, :mod:`.rules`, :mod:`.combined`), which never import it: a combination is handed this loader for its
parts."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from preftune.errors import PreftuneError
from preftune.rewards.base import META_FILE, RewardFunction, as_reward_function, read_meta
from preftune.rewards.combined import CombinedReward
from preftune.rewards.model import RewardModel
from preftune.rewards.rules import RuleModel


def _import_attr(spec: str) -> Any:
    """``package.module:attr`` or ``path/to/file.py:attr``."""
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.exists():
            raise PreftuneError(f"reward '{spec}': file {path} does not exist")
        # a private module name, registered while the file runs: a dataclass (or pickle) defined in the file looks its
        # module up in sys.modules, and the name must not shadow a real module such as the file's stem
        name = f"preftune_reward_file_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise PreftuneError(f"reward '{spec}': cannot import module '{target}' ({err})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise PreftuneError(f"reward '{spec}': module '{target}' has no attribute '{attr}'") from None


def load_reward(spec: str | Path | dict | Callable, **kwargs) -> RewardFunction:
    """Build a :class:`RewardFunction` from a spec.

    * a folder saved by ``preftune reward`` (a reward model, or a rule model: its ``preftune_reward.json`` says
      which); ``kwargs`` (``device``, ``batch_size``, ``rule`` ...) go to its loader;
    * a combination config: a ``.yaml`` / ``.json`` file or a dict (see :mod:`preftune.rewards.combined`);
    * ``"package.module:function"`` or ``"path/to/file.py:function"``: a Python function (wrapped by
      :func:`as_reward_function`) or an object that already is a reward function;
    * a callable: wrapped by :func:`as_reward_function`.
    """
    if callable(spec) and not isinstance(spec, (str, Path)):
        return as_reward_function(spec)
    if isinstance(spec, dict):
        return CombinedReward.from_config(spec, load_part=load_reward, **kwargs)
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        meta = read_meta(path)
        kind = meta.get("kind")
        if kind == "reward_model":
            return RewardModel.load(path, **kwargs)
        if kind == "rule_model":
            return RuleModel.load(path, **kwargs)
        raise PreftuneError(f"{path / META_FILE}: unknown kind '{kind}' (expected reward_model or rule_model)")
    if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
        return CombinedReward.from_file(path, load_part=load_reward, **kwargs)
    if ":" in text and not path.exists():
        obj = _import_attr(text)
        if inspect.isclass(obj):
            obj = obj()
        return as_reward_function(obj)
    raise PreftuneError(
        f"reward '{text}' is not a reward model folder, a combination file (.yaml/.json), or module:function"
    )

