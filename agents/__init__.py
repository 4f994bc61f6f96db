"""Learners that use only the public repro-env API: GRPO, PPO, an SB3 bridge, custom agents."""
