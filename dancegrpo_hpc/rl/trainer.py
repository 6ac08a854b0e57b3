"""The GRPO trainer: one loop for every model, world and scale.

iteration = prompts -> rollouts (rewards overlap the sampling) -> advantages on
the global batch -> policy update -> metrics / evaluation / checkpoint.
Data parallelism is over prompt groups; TP and Ulysses come from the DiT.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

from ..checks import require
from ..config import Config, check_layout, check_runnable
from ..models.family import family_of
from ..sampling import flow_sigmas
from ..sampling.sampler import sample
from .advantages import process_advantages
from .assign import assign_advantages
from .optim import EMA, build_optimizer, local_optimizer, warmup_schedule
from .policy import VelocityOptions, velocity
from .reward_split import RewardSplit
from .rollout import RolloutSettings
from .seeding import derive_seed, randn_per_sample
from .worker import PolicyWorker, UpdateSettings


@dataclass
class Topology:
    device: torch.device
    rank: int
    world: int
    dp_rank: int
    dp: int
    tp_rank: int
    cp_rank: int
    dp_group: Optional[dist.ProcessGroup]
    dp_cp_group: Optional[dist.ProcessGroup]
    tp_group: Optional[dist.ProcessGroup]

    @staticmethod
    def create(config: Config) -> "Topology":
        from megatron.core import parallel_state as ps

        from ..distributed import parallel

        parallel.initialize(config.parallel.tensor, config.parallel.ulysses, seed=config.seed)
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        return Topology(device, dist.get_rank(), dist.get_world_size(), ps.get_data_parallel_rank(),
                        ps.get_data_parallel_world_size(), ps.get_tensor_model_parallel_rank(),
                        ps.get_context_parallel_rank(), ps.get_data_parallel_group(),
                        ps.get_data_parallel_group(with_context_parallel=True), ps.get_tensor_model_parallel_group())

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenates a per-rank tensor over the data-parallel group (rank order)."""
        if self.dp == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.dp)]
        dist.all_gather(parts, t.contiguous(), group=self.dp_group)
        return torch.cat(parts)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.dp > 1:
            dist.all_reduce(t, group=self.dp_group)
        return t


@dataclass
class Advantages:
    """One iteration's rewards and advantages (Trainer.advantages)."""

    scores: Dict[str, torch.Tensor]  # reward name -> [N] over the global batch
    failed: torch.Tensor  # [N] bool
    assigned: object  # rl.assign result: advantages, keep, reward_total, group counts
    kept: torch.Tensor  # this rank's trained rows
    local: torch.Tensor  # their advantages
    process: Optional[torch.Tensor]  # their process advantages [kept, T] (dual mode), else None
    process_final: Optional[float]  # mean process reward of the final samples (guided runs)


CONSOLE_KEYS = ("loss", "grad_norm", "clip_fraction", "kl", "dropped_groups", "skipped_steps", "iteration_s")


def _console(metrics: Dict) -> Dict:
    """The per-iteration console line: rewards and the few numbers to watch (all of
    them go to metrics.jsonl and TensorBoard)."""
    shown = {k: v for k, v in metrics.items() if k.startswith("reward_") or k == "eval_reward"}
    shown.update({k: metrics[k] for k in CONSOLE_KEYS if k in metrics and (metrics[k] or k in ("loss",))})
    return shown


def eval_line(when: str, ev: Dict) -> str:
    """'[eval] WHEN: held-out reward R' and, when samples failed, how many, by which reward,
    and the first error; R reads 'none (no valid samples)' when every sample failed."""
    reward = "none (no valid samples)" if ev["reward"] is None else f"{ev['reward']:.4f}"
    line = f"[eval] {when}: held-out reward {reward}"
    failed = ev.get("failed", 0)
    if failed:
        by_reward = ", ".join(f"{n}: {k}" for n, k in ev["failed_by_reward"].items()) or "all rewards"
        line += (f"; {failed} of {failed + ev['samples']} held-out samples failed ({by_reward}), "
                 f"first error: {ev['first_error']}")
    return line


def _to_dtype(name: Optional[str]) -> Optional[torch.dtype]:
    return {None: None, "float32": torch.float32, "bfloat16": torch.bfloat16}[name]


class Trainer:
    def __init__(self, config: Config, resume: str = "none", world=None, reward_pool=None, check_memory: bool = True,
                 allow_changes: Sequence[str] = ()):
        """world: a data.World to use instead of the one config.data names (tests, embedding);
        reward_pool: rewards.pool.RewardPool when rollout.reward_ranks > 0; check_memory:
        refuse a run whose memory estimate exceeds this device's free memory (config's world only).
        allow_changes: config keys (or sections) that may differ from the resumed checkpoint's."""
        from ..attention import AttentionConfig
        from ..data import build_world
        from ..distributed.spec import LayerSpec
        from ..rewards import AsyncRewardRunner, build_rewards
        from ..rewards.pool import RemoteRewardRunner

        self.config = c = config
        if world is None:
            check_runnable(c)
        self.topo = Topology.create(c)
        check_layout(c, self.topo.world)
        if world is None:  # before the world, the DiT and the rewards load
            from ..memory import check_memory as check_memory_fits
            from ..memory import check_model, latent_shape, model_config

            model = model_config(c)
            check_model(c, model, latent_shape(c, model))
        if world is None and check_memory:
            check_memory_fits(c, self.topo.world, self.topo.device,
                              local_ranks=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        self.resume_path = self._choose_resume(resume, allow_changes)
        self.world = world if world is not None else build_world(c, self.topo.device)
        m = c.model
        policy_options = dict(
            sequence_parallel=c.parallel.sequence_parallel, spec=LayerSpec(m.layer_spec, m.fp8),
            attention=AttentionConfig(backend=m.attention), adaln=m.adaln, dtype=_to_dtype(m.dtype),
            device=self.topo.device, checkpoint_fraction=m.activation_checkpointing, compile=m.compile)
        self.model = self.world.load_policy(**policy_options)
        self.names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        t = c.train
        self.optimizer = build_optimizer(self.params, lr=t.lr, betas=t.betas, eps=t.adam_eps,
                                         weight_decay=t.weight_decay, group=self.topo.dp_cp_group,
                                         zero=c.parallel.zero)
        self.scheduler = warmup_schedule(self.optimizer, t.lr_warmup * t.updates_per_rollout * t.epochs)
        self.ema = EMA(self.params, t.ema_decay) if t.ema_decay is not None else None
        reference = None
        if t.kl_coef > 0:
            # a second copy of the initial weights (deepcopy cannot copy the process groups)
            reference = self.world.load_policy(**dict(policy_options, checkpoint_fraction=0.0))
            reference.load_state_dict(self.model.state_dict())
            reference.eval().requires_grad_(False)
        self.weights = {spec.name: spec.weight for spec in c.rewards}
        if c.rollout.reward_ranks:  # the models live on the pool's ranks only
            require(reward_pool is not None, "config: rollout.reward_ranks > 0 needs the reward pool set up by "
                                             "`dancegrpo-hpc train` (under torchrun); or set rollout.reward_ranks=0")
            self.runner = RemoteRewardRunner(reward_pool, list(self.weights))
        else:
            self.runner = AsyncRewardRunner(build_rewards(c.rewards), max_workers=c.rollout.reward_workers)
        s, r = c.sampling, c.rollout
        self.velocity_opts = VelocityOptions(cfg_scale=s.cfg_scale, guidance=m.guidance,
                                             autocast=_to_dtype(t.autocast), train_uncond=t.cfg_training)
        # the schedule's shift: fixed, or the family's resolution-dependent one
        self.shift = family_of(self.model).sampling_shift(self.model.config, self.world.latent_shape, s.shift,
                                                          s.shift_mode)
        rollout = RolloutSettings(s.steps, self.shift, s.kind, s.eta, r.group_size, r.micro_batch, r.buffer_device,
                                  c.seed)
        update = UpdateSettings(t.timestep_fraction, t.clip_range, t.adv_clip_max, t.updates_per_rollout, t.epochs,
                                t.micro_batch, t.grad_clip, t.kl_coef, c.seed)
        self.worker = PolicyWorker(self.model, self.params, self.optimizer, self.scheduler, rollout=rollout,
                                   update=update, velocity_opts=self.velocity_opts, dp_group=self.topo.dp_group,
                                   dp_cp_group=self.topo.dp_cp_group, tp_group=self.topo.tp_group,
                                   sharded=self._tp_sharded(), ema=self.ema,
                                   reference=reference)
        self.guide_for = self._build_guidance()
        self.split = RewardSplit.model_replica()  # each GPU of a TP x Ulysses group decodes and scores 1/g
        self.iteration = 0
        self.history: List[Dict] = []
        self.state: Dict = {"wall_s": 0.0}

    def _build_guidance(self):
        """Euphonium: a Guide per rollout micro-batch (guided steps and/or process scores), or None."""
        from ..rewards.process import build_process_reward
        from ..config import guided_per_group
        from ..sampling.guidance import Guide, GuidanceSettings

        g = self.config.guidance
        if g.process_reward is None:
            return None
        prm = build_process_reward(g.process_reward, self.world, g.process_options)
        settings = GuidanceSettings(g.scale, g.beta, g.normalize, g.start, g.end, g.internalise)
        eta = self.config.sampling.eta
        guided_members = guided_per_group(g.fraction, self.config.rollout.group_size)
        return lambda prompts, members: Guide(prm, settings, eta, prompts, guide=g.guiding,
                                              guided=members < guided_members)

    def _tp_sharded(self) -> List[bool]:
        from ..models.hunyuan_video.weights import tp_sharded

        flags = dict(zip([n for n, _ in self.model.named_parameters()], tp_sharded(self.model)))
        return [flags[n] for n in self.names]

    # ------------------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.topo.rank == 0

    def prompts_for(self, iteration: int):
        """This rank's prompts of an iteration and their global indices in it. Prompt
        order: a fresh seeded permutation of the train prompts per epoch."""
        c, prompts = self.config, self.world.train_prompts
        per_iter = c.rollout.prompts_per_iteration
        chosen = []
        for pos in range(iteration * per_iter, (iteration + 1) * per_iter):
            epoch, within = divmod(pos, len(prompts))
            g = torch.Generator().manual_seed(derive_seed(c.seed, "prompt-order", epoch))
            chosen.append(prompts[int(torch.randperm(len(prompts), generator=g)[within])])
        local = per_iter // self.topo.dp
        ids = torch.arange(self.topo.dp_rank * local, (self.topo.dp_rank + 1) * local)
        return [chosen[i] for i in ids.tolist()], ids

    # ------------------------------------------------------------------------------------------
    def run_iteration(self, iteration: int) -> Dict[str, float]:
        c, topo = self.config, self.topo
        t0 = time.perf_counter()
        prompts, prompt_ids = self.prompts_for(iteration)
        cond = self.world.encode(prompts, topo.device, negative=c.sampling.cfg_scale > 1)
        g = c.rollout.group_size
        sample_prompts = [p for p in prompts for _ in range(g)]
        sample_ids = (prompt_ids.repeat_interleave(g) * g + torch.arange(g).repeat(len(prompts))).long()

        def submit(final, part):  # this GPU's share of the micro-batch (rl/reward_split.py)
            rows = self.split.rows(part.start, part.stop)
            if rows:
                latents = final[torch.tensor(rows, device=final.device) - part.start]
                cond_rows = torch.tensor(rows, device=cond.device) // g  # samples -> their prompts
                self.runner.submit(self.world.decode(latents, cond.select(cond_rows)),
                                   [sample_prompts[r] for r in rows], sample_ids[rows].tolist())

        batch = self.worker.generate_rollouts(cond, prompts, prompt_ids, iteration, self.world.latent_shape, submit,
                                              self.guide_for)
        t_rollout = time.perf_counter()
        results = self.split.gather(self.runner.collect(), sample_ids.tolist(), list(self.weights))
        t_rewards = time.perf_counter()
        adv = self.advantages(batch, results)
        stats = self.update(batch, adv, iteration)
        t_train = time.perf_counter()
        assigned, ok = adv.assigned, ~adv.failed
        metrics = {
            "iteration": iteration + 1,
            "reward_mean": float(assigned.reward_total[ok].mean()) if ok.any() else float("nan"),
            "loss": stats.get("loss", float("nan")),
        }
        for n, col in adv.scores.items():
            metrics[f"reward_{n}"] = float(col[ok].mean()) if ok.any() else float("nan")
        metrics.update({k: v for k, v in stats.items() if k != "loss"})
        if adv.process_final is not None:
            metrics["process_reward_final"] = adv.process_final
        metrics.update(dropped_groups=assigned.dropped_groups, zero_variance_groups=assigned.zero_variance_groups,
                       reward_failures=int(adv.failed.sum()), trained_samples=int(assigned.keep.sum()),
                       time_rollout_s=t_rollout - t0, time_reward_wait_s=t_rewards - t_rollout,
                       time_train_s=t_train - t_rewards, iteration_s=time.perf_counter() - t0)
        if results.errors and self.is_main:
            for line in results.errors[:5]:
                print(f"[reward] iteration {iteration + 1}: {line} (group dropped, training continues)", flush=True)
        if stats.get("skipped_steps", 0) and self.is_main:
            print(f"[train] iteration {iteration + 1}: skipped {int(stats['skipped_steps'])} optimizer step(s) "
                  "with a non-finite loss or gradient norm", flush=True)
        return metrics

    def advantages(self, batch, results) -> "Advantages":
        """Rewards of the whole global batch -> per-reward group advantages (and the
        process advantages in dual mode); which of this rank's samples are trained."""
        c, topo, g = self.config, self.topo, self.config.rollout.group_size
        names = list(self.weights)
        local_scores = torch.stack([results.scores[n].float() for n in names], dim=1)  # [N, R]
        scores_all = topo.all_gather(local_scores.to(topo.device)).cpu()
        failed = topo.all_gather(results.failed.to(topo.device)).cpu().bool()
        scores = {n: scores_all[:, i] for i, n in enumerate(names)}
        assigned = assign_advantages(scores, failed, self.weights, g, c.train.algorithm, c.train.best_of_n)
        mine = slice(topo.dp_rank * len(batch), (topo.dp_rank + 1) * len(batch))
        kept = torch.nonzero(assigned.keep[mine]).flatten()
        process, process_final = None, None
        if "process_scores" in batch.extras:
            process_all = topo.all_gather(batch.extras["process_scores"].to(topo.device)).cpu()  # [N, T+1]
            process_final = float(process_all[:, -1].mean())
            if c.guidance.process_advantage > 0:
                process = process_advantages(process_all, g)[mine][kept]
        return Advantages(scores, failed, assigned, kept, assigned.advantages[mine][kept], process, process_final)

    def update(self, batch, adv: "Advantages", iteration: int) -> Dict[str, float]:
        """The policy update on this rank's kept samples (every rank joins while any
        rank has samples to train: the update's collectives span them all)."""
        if int(adv.assigned.keep.sum()) == 0:
            return {}
        return self.worker.update_policy(batch.select(adv.kept), adv.local, iteration, adv.process,
                                         self.config.guidance.process_advantage)

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, keep_videos: int = 0):
        """Held-out prompts, deterministic ODE sampler, fixed seeds (independent of the
        iteration): mean rewards, and the first videos of this rank for the sample grid (each
        prompt's first sample; kept by the member of the TP x Ulysses group that decodes it,
        member 0, as each member decodes and scores only its share: rl/reward_split.py)."""
        c, topo = self.config, self.topo
        prompts = self.world.eval_prompts
        mine = list(range(topo.dp_rank, len(prompts), topo.dp))
        k = c.eval.samples_per_prompt
        sigmas = flow_sigmas(c.sampling.steps, self.shift).to(torch.float64)
        names = list(self.weights)
        r = len(names)
        # one all-reduce: [weighted total, each reward's sum, valid samples, failed samples, each reward's failures]
        sums = torch.zeros(2 * r + 3, dtype=torch.float64)
        first_error = None
        videos, scored = [], []
        rows = self.split.rows(0, k)  # this member's samples of each prompt
        if self.ema is not None:
            self.ema.swap()
        self.model.eval()
        try:
            for i in mine:
                cond = self.world.encode([prompts[i]] * k, topo.device, negative=c.sampling.cfg_scale > 1)
                seeds = [derive_seed(c.seed, "eval-noise", i, j) for j in range(k)]
                initial = randn_per_sample(seeds, self.world.latent_shape, topo.device)
                traj = sample(lambda x, s, _: velocity(self.model, x, s, cond, self.velocity_opts), initial, sigmas,
                              "ode", store_latents=False)
                if not rows:  # more group members than samples per prompt: nothing to score here
                    scored.append(None)
                    continue
                picked = torch.tensor(rows, device=traj.final.device)
                decoded = self.world.decode(traj.final[picked], cond.select(picked.to(cond.device)))
                scored.append(self.runner.run_sync(decoded, [prompts[i]] * len(rows), rows))
                if len(videos) < keep_videos and rows[0] == 0:
                    videos.append(decoded[0])
        finally:
            if self.ema is not None:
                self.ema.swap()
        scored = self.split.gather_many(scored, [list(range(k))] * len(mine), names)
        for res in scored:  # every sample of each prompt, on every member of the group
            ok = ~res.failed
            total = sum(self.weights[n] * res.scores[n].float() for n in names) / sum(self.weights.values())
            sums[0] += float(total[ok].sum())
            for j, n in enumerate(names):
                sums[1 + j] += float(res.scores[n][ok].sum())
                sums[r + 3 + j] += int(torch.isnan(res.scores[n].float()).sum())  # NaN: that reward failed
            sums[r + 1] += int(ok.sum())
            sums[r + 2] += int(res.failed.sum())
            if first_error is None and res.errors:
                first_error = res.errors[0]
        sums = topo.sum(sums.to(topo.device)).cpu().tolist()
        valid, failed = int(sums[r + 1]), int(sums[r + 2])
        # no valid sample: no number (None -> null in summary.json), never a mean of nothing
        out = {"reward": sums[0] / valid if valid else None}
        out.update({f"reward_{n}": sums[1 + j] / valid if valid else None for j, n in enumerate(names)})
        out.update(samples=valid, failed=failed)
        if failed:  # every rank joins: the counts are global
            out["failed_by_reward"] = {n: int(sums[r + 3 + j]) for j, n in enumerate(names) if sums[r + 3 + j]}
            out["first_error"] = self._first_across_ranks(first_error)
        return out, (torch.stack(videos) if videos else None)

    def _first_across_ranks(self, line: Optional[str]) -> Optional[str]:
        """The first data-parallel rank's line that is not None (a collective over the dp group)."""
        if self.topo.dp == 1:
            return line
        lines = [None] * self.topo.dp
        dist.all_gather_object(lines, line, group=self.topo.dp_group)
        return next((x for x in lines if x is not None), None)

    # ------------------------------------------------------------------------------------------
    def _checkpoint_states(self):
        # tensors only: megatron layers add non-tensor extra-state entries
        model_state = {n: t.detach() for n, t in self.model.state_dict().items() if isinstance(t, torch.Tensor)}
        optim_state = {"optimizer": local_optimizer(self.optimizer).state_dict()}
        ema_state = self.ema.state(self.names) if self.ema is not None else None
        return model_state, optim_state, ema_state

    def _layout(self) -> Dict:
        p = self.config.parallel
        return {"tp": p.tensor, "ulysses": p.ulysses, "sequence_parallel": p.sequence_parallel, "dp": self.topo.dp,
                "zero": p.zero}

    def save(self, iteration: int) -> None:
        from ..checkpoint import TrainerState, save_checkpoint

        topo = self.topo
        model_state, optim_state, ema_state = self._checkpoint_states()
        trainer_state = TrainerState(
            iteration=iteration, world_size=topo.world, layout=self._layout(),
            data_position={"prompts_consumed": iteration * self.config.rollout.prompts_per_iteration},
            scheduler=self.scheduler.state_dict(), metrics_history=self.history, config=self.config.to_dict(),
            extra=self.state)
        save_checkpoint(self.config.output_dir, iteration, rank=topo.rank, world_size=topo.world,
                        model_state=model_state, writes_model=topo.dp_rank == 0 and topo.cp_rank == 0,
                        shard_tag=f"tp{topo.tp_rank}", optimizer_state=optim_state,
                        trainer_state=trainer_state if topo.rank == 0 else None, ema_state=ema_state,
                        keep_last=self.config.checkpoint.keep_last)

    def _choose_resume(self, resume: str, allow_changes: Sequence[str]):
        """Before anything heavy loads: the newest checkpoint intact on every rank (the
        same on all of them; a damaged one is skipped with one line), and its config
        compared with this one (allow_changes: keys that may differ)."""
        from ..checkpoint import check_config_changes, choose_checkpoint, normalise_allowed, read_trainer_state

        topo, current = self.topo, self.config.to_dict()
        normalise_allowed(allow_changes, current)
        path = choose_checkpoint(resume, self.config.output_dir, rank=topo.rank, shard_tag=f"tp{topo.tp_rank}",
                                 world_size=topo.world, layout=self._layout(),
                                 report=(lambda line: print(line, flush=True)) if self.is_main else None)
        if path is not None:
            accepted = check_config_changes(read_trainer_state(path).config, current, allow_changes)
            if accepted and self.is_main:
                print(f"[resume] config changes from {path.name}: {'; '.join(accepted)}", flush=True)
        return path

    def load(self, path: str) -> None:
        from ..checkpoint import apply_optimizer_settings, load_checkpoint, restore_rng_state

        topo = self.topo
        ckpt = load_checkpoint(path, rank=topo.rank, shard_tag=f"tp{topo.tp_rank}", world_size=topo.world,
                               layout=self._layout())
        missing, unexpected = self.model.load_state_dict(ckpt.model_state, strict=False)
        tensors = {n for n, t in self.model.state_dict().items() if isinstance(t, torch.Tensor)}
        missing = [n for n in missing if n in tensors]
        require(not missing and not unexpected, f"resume: checkpoint {path} does not match the model "
                                                f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        local_optimizer(self.optimizer).load_state_dict(ckpt.optimizer_state["optimizer"])
        self.scheduler.load_state_dict(ckpt.trainer_state.scheduler)
        t = self.config.train  # the configured values, not the restored ones (they differ only where allowed)
        apply_optimizer_settings(self.optimizer, self.scheduler, lr=t.lr, betas=t.betas, eps=t.adam_eps,
                                 weight_decay=t.weight_decay, local=local_optimizer(self.optimizer))
        if self.ema is not None:
            require(ckpt.ema_state is not None, f"resume: checkpoint {path} has no EMA weights but train.ema_decay is set")
            self.ema.load(ckpt.ema_state, self.names)
        restore_rng_state(ckpt.rng_state)
        self.iteration = int(ckpt.trainer_state.iteration)
        self.history = list(ckpt.trainer_state.metrics_history)
        self.state = dict(ckpt.trainer_state.extra)

    # ------------------------------------------------------------------------------------------
    def train(self) -> Dict:
        from ..outputs import (MetricsLog, TrainingProgress, format_summary_line, plot_reward_curve, write_summary,
                               write_video_grid)

        c = self.config
        start = time.perf_counter()
        if self.resume_path:
            self.load(self.resume_path)
            if self.is_main:
                print(f"[resume] from {self.resume_path} at iteration {self.iteration}", flush=True)
        log = MetricsLog(c.output_dir, tensorboard=c.logging.tensorboard,
                         resume_iteration=self.iteration if self.resume_path else None) if self.is_main else None
        grid_n = 4 if c.logging.sample_grid else 0
        if "eval_before" not in self.state:
            before, videos = self.evaluate(keep_videos=grid_n)
            self.state["eval_before"] = before
            if self.is_main and videos is not None:
                torch.save(videos, os.path.join(c.output_dir, "videos_before.pt"))
            if self.is_main:
                print(eval_line("before training", before), flush=True)
        bar = TrainingProgress(c.train.iterations, start=self.iteration, rank=self.topo.rank,
                               print_lines=c.logging.progress)
        last_saved = self.iteration
        for it in range(self.iteration, c.train.iterations):
            metrics = self.run_iteration(it)
            if c.eval.every and (it + 1) % c.eval.every == 0 and it + 1 < c.train.iterations:
                ev, _ = self.evaluate()
                metrics["eval_reward"] = ev["reward"]  # None when no held-out sample scored
                if ev["failed"]:
                    metrics["eval_failed"] = ev["failed"]
                    if self.is_main:
                        print(eval_line(f"iteration {it + 1}", ev), flush=True)
            self.history.append(metrics)
            self.iteration = it + 1
            if log is not None:
                log.log(self.iteration, {k: v for k, v in metrics.items() if k != "iteration"})
            bar.update(self.iteration, _console(metrics))
            if c.checkpoint.every and self.iteration % c.checkpoint.every == 0:
                self._accumulate_wall(start)
                start = time.perf_counter()
                self.save(self.iteration)
                last_saved = self.iteration
        bar.close()
        after, videos = self.evaluate(keep_videos=grid_n)
        if self.is_main and after["failed"]:
            print(eval_line("after training", after), flush=True)
        self._accumulate_wall(start)
        if last_saved != self.iteration or self.iteration == 0:
            self.save(self.iteration)
        before = self.state["eval_before"]
        summary = {"reward_before": before["reward"], "reward_after": after["reward"],
                   "iterations": self.iteration, "wall_s": self.state["wall_s"],
                   "eval_before": before, "eval_after": after}
        if self.is_main:
            write_summary(c.output_dir, summary)
            plot_reward_curve(self.history, os.path.join(c.output_dir, "reward_curve.png"),
                              keys=["reward_mean"] + [f"reward_{n}" for n in self.weights])
            before_path = os.path.join(c.output_dir, "videos_before.pt")
            if videos is not None and os.path.exists(before_path):
                old = torch.load(before_path, weights_only=True)
                # evaluate() keeps the videos of this rank's first held-out prompts: label each column with its prompt
                shown = self.world.eval_prompts[self.topo.dp_rank::self.topo.dp][: len(videos)]
                write_video_grid({"before": old, "after": videos}, os.path.join(c.output_dir, "samples.gif"),
                                 column_labels=shown)
            log.close()
            print(format_summary_line(summary), flush=True)
        return summary

    def _accumulate_wall(self, since: float) -> None:
        self.state["wall_s"] = self.state.get("wall_s", 0.0) + time.perf_counter() - since

    def close(self) -> None:
        self.runner.close()
