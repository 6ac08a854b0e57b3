"""Rollout engine and buffer: G samples per prompt sharing one initial noise, run
as batches (micro-batched to a memory budget), every state and step log-prob kept
for training. Finished micro-batches go to the reward runner at once, so rewards
compute while the next micro-batch samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import torch

from ..sampling import flow_sigmas
from ..sampling.sampler import sample, stochastic_steps
from ..conditioning import Conditioning
from .policy import VelocityOptions, velocity
from .seeding import derive_seed, per_sample_noise, randn_per_sample


@dataclass
class RolloutBatch:
    """latents [N, T+1, C, F, H, W]: x_0 (noise) .. x_T, so step t maps latents[:, t]
    to latents[:, t+1]; log_probs [N, T] float32 (NaN at deterministic steps);
    sigmas [T+1] float64; cond per sample; ids are global within the iteration."""

    latents: torch.Tensor
    log_probs: torch.Tensor
    sigmas: torch.Tensor
    stochastic: torch.Tensor
    cond: Conditioning
    prompts: List[str]
    prompt_ids: torch.Tensor
    sample_ids: torch.Tensor
    group_size: int
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.latents.shape[0]

    @property
    def num_steps(self) -> int:
        return self.log_probs.shape[1]

    def select(self, index: torch.Tensor) -> "RolloutBatch":
        """The samples at index; per-sample extras (tensors [N, ...]) are indexed too."""
        index = torch.as_tensor(index, dtype=torch.long)
        dev = self.latents.device
        extras = {k: v[index.to(v.device)] if isinstance(v, torch.Tensor) and v.shape[:1] == (len(self),) else v
                  for k, v in self.extras.items()}
        return RolloutBatch(self.latents[index.to(dev)], self.log_probs[index.to(self.log_probs.device)], self.sigmas,
                            self.stochastic, self.cond.select(index.to(self.cond.device)),
                            [self.prompts[i] for i in index.tolist()], self.prompt_ids[index], self.sample_ids[index],
                            self.group_size, extras)

    def scored_next(self, rows: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """The sample each step's log-prob scores under the plain policy mean: x_{t+1},
        minus the guided-mean shift when log-probs are under the guided mean."""
        dev = self.latents.device
        x_next = self.latents[rows.to(dev), steps.to(dev) + 1]
        shifts = self.extras.get("guide_shifts")
        if shifts is not None:
            x_next = x_next - shifts[rows.to(shifts.device), steps.to(shifts.device)].to(x_next.device, x_next.dtype)
        return x_next


@dataclass(frozen=True)
class RolloutSettings:
    steps: int
    shift: float
    kind: str
    eta: float
    group_size: int
    micro_batch: int  # samples per forward; 0 = all
    buffer_device: str  # "device" | "cpu"
    seed: int


def _buffer(shape, device: torch.device, placement: str) -> torch.Tensor:
    if placement == "cpu" and device.type != "cpu":
        return torch.empty(shape, dtype=torch.float32, pin_memory=True)
    return torch.empty(shape, dtype=torch.float32, device=device)


def group_initial_noise(seed: int, iteration: int, prompt_ids: Sequence[int], group_size: int, shape, device) -> torch.Tensor:
    """[P * G, ...]: one draw per prompt group (stream named by seed, iteration and the
    global prompt index, so groups and ranks differ), repeated for its G samples."""
    seeds = [derive_seed(seed, "initial-noise", iteration, int(p)) for p in prompt_ids]
    per_group = randn_per_sample(seeds, shape, device)
    return per_group.repeat_interleave(group_size, dim=0)


def generate_rollouts(model, cond: Conditioning, prompts: List[str], prompt_ids: torch.Tensor, iteration: int,
                      latent_shape, settings: RolloutSettings, opts: VelocityOptions,
                      on_micro_batch: Optional[Callable[[torch.Tensor, slice], None]] = None,
                      guide_for: Optional[Callable[[List[str], torch.Tensor], object]] = None) -> RolloutBatch:
    """cond / prompts / prompt_ids are per prompt ([P]); returns the [P * G] batch.
    on_micro_batch(final_latents, sample_slice) is called as each micro-batch finishes.
    guide_for(prompts of a micro-batch, each sample's index in its group) -> a
    sampling.guidance.Guide (Euphonium); the
    batch then carries extras process_scores [N, T+1] and, for log-probs under the
    guided mean, guide_shifts [N, T, ...]."""
    device = cond.device
    g = settings.group_size
    n = len(prompts) * g
    sigmas = flow_sigmas(settings.steps, settings.shift).to(torch.float64)
    stochastic = stochastic_steps(settings.kind, sigmas, None)
    sample_ids = (prompt_ids.repeat_interleave(g) * g + torch.arange(g).repeat(len(prompts))).long()
    per_sample = cond.select(torch.arange(len(prompts), device=device).repeat_interleave(g))
    latents = _buffer((n, settings.steps + 1, *latent_shape), device, settings.buffer_device)
    log_probs = torch.empty((n, settings.steps), dtype=torch.float32, device=device)
    initial = group_initial_noise(settings.seed, iteration, prompt_ids.tolist(), g, latent_shape, device)
    mb = settings.micro_batch or n
    prompts_per_sample = [p for p in prompts for _ in range(g)]
    extras = {}
    with torch.no_grad():
        for start in range(0, n, mb):
            part = slice(start, min(n, start + mb))
            c = per_sample.select(torch.arange(part.start, part.stop, device=device))
            seeds = [derive_seed(settings.seed, "sde-noise", iteration, int(s)) for s in sample_ids[part]]
            noise_fn = per_sample_noise(seeds, latent_shape, device)

            def model_fn(x, sigma, i, c=c):
                return velocity(model, x, sigma, c, opts)

            guide = guide_for(prompts_per_sample[part], sample_ids[part] % g) if guide_for is not None else None
            traj = sample(model_fn, initial[part], sigmas, settings.kind, settings.eta, noise_fn=noise_fn,
                          out=latents[part], guide=guide)
            log_probs[part] = traj.log_probs
            for key in ("process_scores", "guide_shifts"):
                value = getattr(traj, key)
                if value is not None:
                    if key not in extras:
                        extras[key] = value.new_empty((n, *value.shape[1:]))
                    extras[key][part] = value
            if on_micro_batch is not None:
                on_micro_batch(traj.final, part)
    return RolloutBatch(latents, log_probs, sigmas, stochastic, per_sample, prompts_per_sample,
                        prompt_ids.repeat_interleave(g).long(), sample_ids, g, extras)
