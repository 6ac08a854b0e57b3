"""dancegrpo-hpc: GRPO alignment of video flow-matching models (DanceGRPO, Euphonium).

Subpackages: `sampling` (schedules, SDE/ODE steps with log-probs, the sampler),
`rl` (advantages, losses, timestep selection), `ops` (fused kernels and their
pure-torch references).
"""

__version__ = "0.1.0"
