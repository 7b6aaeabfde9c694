"""Rewards: the one interface (:mod:`.base`), trained reward models (:mod:`.model`), rule-violation models
(:mod:`.rules`) and their combination (:mod:`.combined`)."""

from preftune.rewards.base import PythonReward, RewardFunction, as_reward_function, load_reward

__all__ = ["RewardFunction", "PythonReward", "as_reward_function", "load_reward"]
