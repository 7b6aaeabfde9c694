"""Constitutional AI: critique -> revision data (SL-CAI) and AI preference labels (RL-CAI / RLAIF) from a constitution."""
