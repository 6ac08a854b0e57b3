"""The policy worker: the three verbs a GRPO iteration needs from the model
(generate rollouts, compute log-probs, update policy), so rollout and training
can later run on separate pools of ranks behind the same interface (veRL-style).

update_policy recomputes the DiT forward at each selected timestep and runs its
backward at once: activations of one timestep live at a time (under activation
checkpointing of the blocks), so peak memory does not grow with the number of
trained timesteps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from ..checks import require
from ..rl.loss import grpo_loss, kl_penalty
from ..rl.timesteps import num_train_timesteps
from ..sampling.sde import sde_step
from .optim import EMA, clip_gradients, global_grad_norm, is_finite, reduce_gradients
from ..conditioning import Conditioning
from .policy import VelocityOptions, velocity
from .rollout import RolloutBatch, RolloutSettings, generate_rollouts
from .seeding import stream


# grpo_loss stats, averaged over every trained (sample, timestep) of an update on all ranks
STAT_KEYS = ("policy_loss", "kl", "clip_fraction", "approx_kl", "ratio_mean", "ratio_max", "process_loss")


@dataclass(frozen=True)
class UpdateSettings:
    timestep_fraction: float
    clip_range: float
    adv_clip_max: float
    updates_per_rollout: int
    epochs: int
    micro_batch: int
    grad_clip: float
    kl_coef: float
    seed: int


def select_train_timesteps(batch: RolloutBatch, tau: float, seed: int, iteration: int, epoch: int) -> torch.Tensor:
    """[N, k]: each sample's own random subset of the trainable steps (stochastic, not
    the last), k = ceil(tau * (T - 1)); drawn from the sample's stream."""
    trainable = torch.nonzero(batch.stochastic[:-1]).flatten()
    require(trainable.numel() >= 1, "training: no stochastic step before the last one; check sampling.kind")
    k = min(num_train_timesteps(batch.num_steps, tau), trainable.numel())
    rows = []
    for sid in batch.sample_ids.tolist():
        keys = torch.rand(trainable.numel(), generator=stream("cpu", seed, "timesteps", iteration, epoch, sid))
        rows.append(trainable[keys.argsort()[:k]])
    return torch.stack(rows)


class PolicyWorker:
    def __init__(self, model, params: List[torch.nn.Parameter], optimizer, scheduler, *, rollout: RolloutSettings,
                 update: UpdateSettings, velocity_opts: VelocityOptions, dp_group=None, dp_cp_group=None,
                 tp_group=None, sharded: Optional[List[bool]] = None, ema: Optional[EMA] = None, reference=None):
        self.model, self.params, self.optimizer, self.scheduler = model, params, optimizer, scheduler
        self.rollout, self.update, self.opts = rollout, update, velocity_opts
        self.dp_group, self.dp_cp_group, self.tp_group = dp_group, dp_cp_group, tp_group
        self.ema, self.reference = ema, reference
        self.sharded = sharded if sharded is not None else [False] * len(params)  # TP-split, per parameter

    # ---- verb 1 -------------------------------------------------------------------------------
    def generate_rollouts(self, cond: Conditioning, prompts: List[str], prompt_ids: torch.Tensor, iteration: int,
                          latent_shape, on_micro_batch=None, guide_for=None) -> RolloutBatch:
        self.model.eval()
        return generate_rollouts(self.model, cond, prompts, prompt_ids, iteration, latent_shape, self.rollout,
                                 self.opts.with_(train_uncond=False), on_micro_batch, guide_for)

    # ---- shared by verbs 2 and 3 --------------------------------------------------------------
    def _step_log_prob(self, batch: RolloutBatch, rows: torch.Tensor, steps: torch.Tensor, opts: VelocityOptions,
                       with_mean: bool = False, model=None):
        device = batch.cond.device
        x = batch.latents[rows.to(batch.latents.device), steps.to(batch.latents.device)].to(device)
        x_next = batch.scored_next(rows, steps).to(device)  # no guidance here: the PRM runs only in rollouts
        sigma = batch.sigmas[steps].to(device)
        sigma_next = batch.sigmas[steps + 1].to(device)
        cond = batch.cond.select(rows.to(device))
        v = velocity(model if model is not None else self.model, x, sigma, cond, opts)
        res = sde_step(self.rollout.kind, v, x, sigma, sigma_next, self.rollout.eta, prev_sample=x_next,
                       return_mean=with_mean)
        return res

    # ---- verb 2 -------------------------------------------------------------------------------
    @torch.no_grad()
    def compute_log_probs(self, batch: RolloutBatch, timesteps: torch.Tensor) -> torch.Tensor:
        """log-probs [N, k] of the stored transitions at `timesteps` under the current weights."""
        self.model.eval()
        out = torch.empty(timesteps.shape, dtype=torch.float32)
        mb = self.update.micro_batch or len(batch)
        for start in range(0, len(batch), mb):
            rows = torch.arange(start, min(len(batch), start + mb))
            for j in range(timesteps.shape[1]):
                res = self._step_log_prob(batch, rows, timesteps[rows, j], self.opts.with_(train_uncond=False))
                out[rows, j] = res.log_prob.float().cpu()
        return out

    # ---- verb 3 -------------------------------------------------------------------------------
    def update_policy(self, batch: RolloutBatch, advantages: torch.Tensor, iteration: int,
                      process_advantages: Optional[torch.Tensor] = None, process_weight: float = 0.0) -> Dict[str, float]:
        """updates_per_rollout optimizer steps per epoch over `batch` (this rank's kept
        samples, in order); returns averaged stats. A step whose loss or gradient norm is
        not finite is skipped on every rank and counted in `skipped_steps`.
        process_advantages [N, T] (Euphonium's dual mode): a second clipped GRPO loss
        with the per-step advantages, weighted by process_weight, added to the outcome loss."""
        process = (process_advantages, process_weight) if process_advantages is not None else None
        s = self.update
        self.model.train()
        n = len(batch)
        totals: Dict[str, float] = {}
        count = 0
        skipped = 0
        for epoch in range(s.epochs):
            timesteps = select_train_timesteps(batch, s.timestep_fraction, s.seed, iteration, epoch)
            # strided mini-batches (sample i goes to update i mod U): with equal local counts the
            # union over ranks is the mini-batch a single rank would form, so data parallelism
            # does not change the updates; dropped groups can leave a rank fewer (even zero)
            # samples, and every rank still joins each update's collectives
            for u in range(s.updates_per_rollout):
                rows = torch.arange(u, n, s.updates_per_rollout)
                stats = self._one_update(batch, advantages, timesteps, rows, process)
                if len(stats) == 1:  # no sample on any rank in this chunk
                    continue
                skipped += int(stats.pop("skipped"))
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value
                count += 1
        out = {key: value / max(1, count) for key, value in totals.items()}
        out["skipped_steps"] = float(skipped)
        out["optimizer_steps"] = float(count - skipped)
        return out

    def _global_sum(self, values: List[float]) -> List[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.params[0].device)
        if dist.is_initialized() and self.dp_group is not None and dist.get_world_size(self.dp_group) > 1:
            dist.all_reduce(t, group=self.dp_group)
        return t.tolist()

    def _global_count(self, local: int) -> int:
        return int(self._global_sum([float(local)])[0])

    def _one_update(self, batch: RolloutBatch, advantages: torch.Tensor, timesteps: torch.Tensor,
                    rows: torch.Tensor, process=None) -> Dict[str, float]:
        s = self.update
        k = timesteps.shape[1]
        total = self._global_count(rows.numel())
        if total == 0:
            return {"skipped": 0.0}
        mb = s.micro_batch or rows.numel()
        sums: Dict[str, torch.Tensor] = {}
        loss_sum = torch.zeros((), dtype=torch.float64)
        for p in self.params:
            p.grad = None
        for start in range(0, rows.numel(), max(1, mb)):
            part = rows[start:start + mb]
            for j in range(k):
                steps = timesteps[part, j]
                res = self._step_log_prob(batch, part, steps, self.opts, with_mean=s.kl_coef > 0)
                old = batch.log_probs[part.to(batch.log_probs.device), steps.to(batch.log_probs.device)]
                kl = self._kl(res, batch, part, steps) if s.kl_coef > 0 else None
                adv = advantages[part].to(res.log_prob.device)
                loss, stats = grpo_loss(res.log_prob, old.to(res.log_prob.device), adv, s.clip_range, s.adv_clip_max,
                                        kl=kl, kl_coef=s.kl_coef)
                if process is not None:
                    proc, weight = process
                    proc_adv = proc[part, steps].to(res.log_prob.device)
                    proc_loss, _ = grpo_loss(res.log_prob, old.to(res.log_prob.device), proc_adv, s.clip_range,
                                             s.adv_clip_max)
                    loss = loss + weight * proc_loss
                    stats = dict(stats, process_loss=proc_loss.detach())
                # global mean over samples and timesteps: gradient sums over ranks give the mean
                (loss * (part.numel() / (total * k))).backward()
                loss_sum += float(loss.detach()) * part.numel() / (total * k)
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + float(value) * part.numel() / (total * k)
        for p in self.params:  # parameters this rank's samples did not reach still join the reduction
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        reduce_gradients(self.params, self.model, self.dp_cp_group)
        norm = global_grad_norm(self.params, self.sharded, self.tp_group)
        loss_t = loss_sum.to(torch.float32).to(self.params[0].device)
        if dist.is_initialized() and self.dp_group is not None and dist.get_world_size(self.dp_group) > 1:
            dist.all_reduce(loss_t, group=self.dp_group)
        finite = is_finite(norm) and is_finite(loss_t)
        if finite:
            clip_gradients(self.params, norm, s.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update()
        for p in self.params:
            p.grad = None
        out = dict(zip(STAT_KEYS, self._global_sum([sums.get(key, 0.0) for key in STAT_KEYS])))
        out.update(loss=float(loss_t), grad_norm=float(norm), skipped=0.0 if finite else 1.0,
                   lr=float(self.optimizer.param_groups[0]["lr"]))
        return out

    def _kl(self, res, batch: RolloutBatch, rows: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Flow-GRPO's KL: ||mean - mean_ref||^2 / (2 std^2) against the frozen reference policy."""
        with torch.no_grad():
            ref = self._step_log_prob(batch, rows, steps, self.opts.with_(train_uncond=False), with_mean=True,
                                          model=self.reference)
        return kl_penalty(res.mean, ref.mean, res.std)
