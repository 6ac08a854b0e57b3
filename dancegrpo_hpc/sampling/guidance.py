"""Euphonium's process-reward-gradient guided SDE step.

The guided transition keeps the SDE's noise and moves its drift up the gradient of
a differentiable process reward model (PRM) on latents:

    mean' = mean + lambda * dt * grad_x r(x_t, sigma_t, c),   dt = sigma_t - sigma_{t+1} > 0

(dt is the step length: the sampler runs sigma downwards, so the signed
sigma_{t+1} - sigma_t would push the sample *down* the reward). lambda is fixed
(`scale`) or eta^2 / (2 beta) (`beta`: the KL-regularised optimum of Euphonium,
where the guided SDE samples the reward-tilted policy p * exp(r / beta)).

The PRM scores the current one-step denoised estimate x0 = x_t - sigma_t * v with
the velocity held fixed, so its gradient reaches x_t through the identity and no
backward runs through the DiT (a latent PRM trained on noisy latents may ignore
`denoised` and read x_t and sigma instead).

Internalisation (Euphonium's default): the rollout is drawn from the guided mean,
but its log-probs (old and new) are computed under the plain policy mean, so the
policy learns to take the guided steps itself and needs no PRM at inference. Off,
log-probs are taken under the guided mean: the sampler then records each step's
shift so training can score x' - shift under the plain mean (the same number).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Sequence, runtime_checkable

import torch

from ..checks import require


@runtime_checkable
class ProcessRewardModel(Protocol):
    name: str

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, prompts: Sequence[str],
                 denoised: torch.Tensor) -> torch.Tensor:
        """Float Tensor[B], differentiable w.r.t. x and denoised (x_t and its one-step
        denoised estimate, [B, C, F, H, W]); sigma [B]; higher is better."""


@dataclass(frozen=True)
class GuidanceSettings:
    """lambda = scale, or eta^2 / (2 beta) when beta is given; guided steps are
    start <= i < end (end None: to the last step); normalize rescales each sample's
    gradient to unit RMS so lambda is in latent units whatever the PRM's scale."""

    scale: Optional[float] = None
    beta: Optional[float] = None
    normalize: bool = True
    start: int = 0
    end: Optional[int] = None
    internalise: bool = True

    def strength(self, eta: float) -> float:
        require((self.scale is None) != (self.beta is None),
                "guidance: give exactly one of scale (a fixed lambda) or beta (lambda = eta^2 / (2 beta))")
        if self.scale is not None:
            require(self.scale >= 0, f"guidance.scale must be >= 0; got {self.scale}")
            return float(self.scale)
        require(self.beta > 0, f"guidance.beta must be > 0; got {self.beta}")
        return eta * eta / (2.0 * self.beta)

    def active(self, step: int, num_steps: int) -> bool:
        end = num_steps if self.end is None else self.end
        return self.start <= step < end


def reward_and_gradient(prm: ProcessRewardModel, x: torch.Tensor, sigma: torch.Tensor, prompts: Sequence[str],
                        velocity: torch.Tensor, normalize: bool):
    """(r [B] float32, grad_x r [B, ...]: raw, or unit RMS per sample), in float32
    (float64 for float64 latents)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    with torch.enable_grad():
        xg = x.detach().to(dtype).requires_grad_(True)
        s = sigma.to(device=x.device, dtype=dtype).view(-1, *([1] * (x.dim() - 1)))
        denoised = xg - s * velocity.detach().to(dtype)
        r = prm(xg, sigma, prompts, denoised).float()
        require(r.shape == (x.shape[0],), f"process reward {prm.name}: must return [B] = [{x.shape[0]}]; got {tuple(r.shape)}")
        (grad,) = torch.autograd.grad(r.sum(), xg)
    if normalize:
        rms = grad.pow(2).mean(dim=tuple(range(1, grad.dim())), keepdim=True).sqrt()
        grad = grad / (rms + 1e-12)
    return r.detach().float(), grad


@torch.no_grad()
def process_score(prm: ProcessRewardModel, x: torch.Tensor, sigma: torch.Tensor, prompts: Sequence[str],
                  velocity: Optional[torch.Tensor]) -> torch.Tensor:
    """r [B] without gradient; velocity None scores x as its own estimate (sigma = 0)."""
    s = sigma.to(device=x.device, dtype=torch.float32).view(-1, *([1] * (x.dim() - 1)))
    denoised = x.float() if velocity is None else x.float() - s * velocity.float()
    return prm(x.float(), sigma, prompts, denoised).float()


def guidance_shift(grad: torch.Tensor, strength: float, sigma: float, sigma_next: float) -> torch.Tensor:
    """lambda * dt * grad r, dt = sigma - sigma_next (> 0): the guided mean minus the plain one."""
    return grad * (strength * (sigma - sigma_next))


class Guide:
    """What the sampler asks at each step: the shift of the guided mean (or None) and
    the process-reward score of the state (recorded for process advantages)."""

    def __init__(self, prm: ProcessRewardModel, settings: GuidanceSettings, eta: float, prompts: Sequence[str],
                 guide: bool = True, guided: Optional[torch.Tensor] = None):
        """guided: [B] bool, the samples whose steps are guided (None: all); the others
        are only scored, so a group can hold guided and plain samples."""
        self.prm, self.settings, self.prompts = prm, settings, list(prompts)
        self.strength = settings.strength(eta) if guide else 0.0
        self.guided = None if guided is None or bool(guided.all()) else guided
        self.guide = guide and self.strength > 0 and (guided is None or bool(guided.any()))

    @property
    def internalise(self) -> bool:
        return self.settings.internalise

    def step(self, i: int, num_steps: int, x: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float,
             stochastic: bool = True):
        """(score [B], shift [B, ...] or None) at step i from state x with velocity v;
        deterministic steps get no shift (and no reward gradient is computed for them)."""
        sig = torch.full((x.shape[0],), sigma, dtype=torch.float64, device=x.device)
        if self.guide and stochastic and self.settings.active(i, num_steps):
            score, grad = reward_and_gradient(self.prm, x, sig, self.prompts, v, self.settings.normalize)
            shift = guidance_shift(grad, self.strength, sigma, sigma_next)
            if self.guided is not None:
                shift = shift * self.guided.to(shift).view(-1, *([1] * (shift.dim() - 1)))
            return score, shift.to(x.dtype)
        return process_score(self.prm, x, sig, self.prompts, v), None

    def final(self, x: torch.Tensor) -> torch.Tensor:
        sig = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        return process_score(self.prm, x, sig, self.prompts, None)
