"""Rewards: the one interface (:mod:`.base`) and the one loader (:mod:`.loading`), trained reward models (:mod:`.model`), rule-violation models
(:mod:`.rules`) and their combination (:mod:`.combined`)."""

from preftune.rewards.base import PythonReward, RewardFunction, as_reward_function
from preftune.rewards.loading import load_reward

__all__ = ["RewardFunction", "PythonReward", "as_reward_function", "load_reward"]
