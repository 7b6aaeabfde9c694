"""Online RL: rollouts (experience.py), PPO (ppo.py), REINFORCE / RLOO / GRPO (pg.py), the shared loop (loop.py),
best-of-N and rejection sampling (best_of_n.py)."""
