"""PPO for RLHF, split into its parts: `maths` (pure functions), `rollout` (sampling and scoring),
`update` (clipped-loss steps) and `stage` (the `ppo` stage that orchestrates them)."""

from zero_chatgpt.model.ppo.stage import ppo

__all__ = ["ppo"]
