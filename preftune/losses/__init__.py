"""Losses as pure functions of log-probs or rewards: sft (instruction tuning), preference (the DPO family),
reward (reward models), policy (online RL)."""
