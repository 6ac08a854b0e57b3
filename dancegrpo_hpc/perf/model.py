"""Analytic performance model of one DanceGRPO iteration of a HunyuanVideo-class DiT.

    estimate(config, world_size, hardware("h800"), Assumptions()) -> report dict
    calibrate(bench_config, measurement) -> achieved FLOP/s of a measured small run

Compute. Matmul FLOPs of the DiT forward, 2 per multiply-accumulate, counted from the
architecture (forward_flops; tests/test_perf_model.py holds it equal to torch's
FlopCounterMode on the tiny model). Per sample with L = video + text tokens, d the
width and m the MLP width, every dual-stream and single-stream block costs
L * (8 d^2 + 4 d m) in linears (dual: separate video / text qkv 3d, out d and MLP;
single: fused linear1 d -> 3d + m, linear2 d + m -> d) plus 4 L^2 d in joint attention
(QK^T and AV), plus the per-sample AdaLN linears; the token refiner, embedders and
output head are added. Rollout: T steps x local samples forwards (x2 under real CFG).
Training: ceil(tau (T - 1)) trained timesteps per kept sample, each a forward, a
backward (2x forward) and the recompute of the checkpointed fraction f of the blocks
(f x forward), plus a reference forward under a KL penalty; x2 under CFG training.
The work of one data-parallel rank is split evenly over its TP x Ulysses GPUs. Time =
FLOPs / (peak x MFU) with the precision's peak (FP8 linears under model.fp8, attention
in BF16), or / a calibrated FLOP/s (calibrate()).

Communication, bytes sent per GPU (ring collectives: an all-reduce of S bytes over n
ranks sends 2 (n-1)/n S, an all-gather / reduce-scatter (n-1)/n S of the whole tensor,
an all-to-all (n-1)/n of the local tensor). Per forward of one sample:
- Megatron TP (+SP): a dual-stream block reduces its attention and its MLP outputs
  (video and text together), a single-stream block its packed output, each refiner
  block two: all-reduces of the L/u tokens x d activations (with SP an all-gather +
  reduce-scatter pair, the same volume).
- Ulysses: q, k, v (sequence -> heads) and the attention output (heads -> sequence),
  four all-to-alls of L/u tokens x d/t per attention layer.
Backward sends the same again, recompute f x forward. Data parallel: per optimizer step
a ZeRO-1 reduce-scatter of the gradients and all-gather of the updated parameters over
the dp x ulysses group, 2 (n-1)/n x this TP rank's parameters x element size.
A group whose ranks fit in one node (Megatron order: TP fastest, then Ulysses, then
data) uses NVLink one way (half the datasheet's bidirectional figure), else InfiniBand;
both x comm_efficiency. TP / Ulysses time is on the critical path unless comm_overlap
hides a fraction; the gradient sync runs after the backward, not overlapped.

With a calibration (perf/calibration.py: figures measured on a GPU) a pass's time is its
GEMMs at the measured GEMM MFU + its attention at the backend's measured kernel MFU (sliding
tile: the blocks its window computes, at its own MFU) + a memory-bound rest that scales with
HBM bandwidth; the fused SDE step, log-prob and optimizer run at measured HBM fractions.

Also: VAE decode and reward time as per-video constants on one GPU, split over the GPUs of a
tensor x ulysses group (as the engine runs them) or on every one of them; rewards hide behind
sampling except the last micro-batch's, the decode does not (each an Assumptions field);
the AdamW step as HBM traffic; memory per GPU from dancegrpo_hpc.memory.estimate_memory.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

from ..checks import require
from ..config import Config, check_layout
from ..models.family import family_of
from ..memory import batch_sizes, check_model, estimate_memory, latent_shape, model_config, parameter_counts, text_tokens, \
    video_tokens
from .hardware import Hardware


ATTENTION_CHOICES = ("sdpa", "flash", "xformers", "te", "sliding_tile")  # config.ATTENTION_BACKENDS


@dataclass(frozen=True)
class Assumptions:
    """What the model cannot know: achieved efficiencies, the cost of the non-DiT stages and
    what overlaps. Every default is what the engine does today."""

    rollout_mfu: float = 0.45  # achieved / peak Tensor Core FLOP/s, no-grad sampling forwards (uncalibrated runs)
    train_mfu: float = 0.40  # the same for training (forward + backward + recompute)
    comm_efficiency: float = 0.70  # achieved / link bandwidth of NCCL collectives
    comm_overlap: float = 0.0  # fraction of TP / Ulysses communication hidden behind compute (engine: none)
    decode_s: float = 3.0  # VAE decode, seconds per video on one GPU
    reward_s: float = 0.25  # all reward models together, seconds per video on one GPU
    text_tokens: Optional[int] = None  # text tokens per sample; None: the padded length (256 for real data)
    # overlap with sampling, as fractions of the stage hidden behind the rollout (at most the rollout's time).
    # Engine: the sampling thread decodes each micro-batch itself (0), and AsyncRewardRunner scores a
    # micro-batch while the next one samples, so all but the last micro-batch's rewards hide (None).
    decode_overlap: float = 0.0
    reward_overlap: Optional[float] = None  # None: (micro-batches - 1) / micro-batches
    # Engine: each GPU of a tensor x ulysses group decodes and scores 1/group of its data rank's videos
    # (rl/reward_split.py); False: every GPU of the group does all of them (replicated, the engine before)
    split_decode: bool = True
    # attention per pass (None: the config's model.attention; the engine uses one backend for both)
    rollout_attention: Optional[str] = None
    train_attention: Optional[str] = None
    sta_tile: Tuple[int, int, int] = (6, 8, 8)  # sliding tile (attention.AttentionConfig's defaults)
    sta_window: Tuple[int, int, int] = (3, 3, 3)
    sta_speedup: Optional[float] = None  # fixed sliding-tile speed-up over dense attention instead of the density
    sta_mask_builds: int = 1  # block-mask builds per iteration: one per distinct shape (cached across blocks, steps)

    def check(self) -> None:
        for name in ("rollout_mfu", "train_mfu", "comm_efficiency"):
            value = getattr(self, name)
            require(isinstance(value, (int, float)) and 0 < value <= 1,
                    f"perf model: {name} must lie in (0, 1]; got {value!r}")
        for name in ("comm_overlap", "decode_overlap", "reward_overlap"):
            value = getattr(self, name)
            require((value is None and name == "reward_overlap") or (isinstance(value, (int, float)) and 0 <= value <= 1),
                    f"perf model: {name} must lie in [0, 1]; got {value!r}")
        for name in ("decode_s", "reward_s"):
            value = getattr(self, name)
            require(isinstance(value, (int, float)) and value >= 0 and value == value,
                    f"perf model: {name} must be a number >= 0 (seconds per video); got {value!r}")
        require(self.text_tokens is None or (isinstance(self.text_tokens, int) and self.text_tokens >= 1),
                f"perf model: text_tokens must be a positive integer or None; got {self.text_tokens!r}")
        for name in ("rollout_attention", "train_attention"):
            value = getattr(self, name)
            require(value is None or value in ATTENTION_CHOICES,
                    f"perf model: {name} must be one of {', '.join(ATTENTION_CHOICES)}; got {value!r}")
        require(self.sta_speedup is None or (isinstance(self.sta_speedup, (int, float)) and self.sta_speedup > 0),
                f"perf model: sta_speedup must be a positive number or None; got {self.sta_speedup!r}")
        require(isinstance(self.sta_mask_builds, int) and self.sta_mask_builds >= 0,
                f"perf model: sta_mask_builds must be an integer >= 0; got {self.sta_mask_builds!r}")


# ---- FLOPs ---------------------------------------------------------------------------------------
# ---- communication -------------------------------------------------------------------------------
def forward_flops(model, video: int, text: int) -> Dict[str, float]:
    """Matmul FLOPs of one forward of one sample of `video` + `text` tokens, {"linear",
    "attention", "total"} (2 per multiply-accumulate), by the model family's cost model."""
    return family_of(model).cost(model).forward_flops(video, text)


def tp_bytes_per_forward(model, tokens: int, text: int, tp: int, ulysses: int, element: int) -> float:
    """Bytes one GPU sends in Megatron TP collectives during one forward of one sample
    (tokens: image / video + text of the sample, text: its text tokens)."""
    return family_of(model).cost(model).tp_bytes(tokens, text, tp, ulysses, element)


def ulysses_bytes_per_forward(model, tokens: int, tp: int, ulysses: int, element: int) -> float:
    """Bytes one GPU sends in Ulysses all-to-alls (q, k, v, out) during one forward of one sample."""
    return family_of(model).cost(model).ulysses_bytes(tokens, tp, ulysses, element)


def dp_bytes_per_step(parameters_per_rank: int, ranks: int, element: int) -> float:
    """Bytes one GPU sends per optimizer step: ZeRO-1 reduce-scatter of the gradients and
    all-gather of the parameters over `ranks` (data x Ulysses) ranks."""
    if ranks == 1:
        return 0.0
    return 2 * (ranks - 1) / ranks * parameters_per_rank * element


# ---- the iteration -------------------------------------------------------------------------------
def _shape(config: Config, world_size: int, text_override: Optional[int] = None):
    """Model config, data-parallel size, (video, text) tokens per sample; raises InputError."""
    model = model_config(config)
    dp = check_layout(config, world_size)
    shape = latent_shape(config, model)
    check_model(config, model, shape)
    return model, dp, shape, video_tokens(shape, model), text_override or text_tokens(config, model)


def _work(config: Config, model, dp: int):
    """Per data-parallel rank: batch sizes, trained timesteps per sample, the CFG factor of
    a sampling step and the forward-equivalents each trained (sample, timestep) pair costs."""
    from ..rl.timesteps import num_train_timesteps

    s, t = config.sampling, config.train
    sizes = batch_sizes(config, dp)
    cfg = 2 if s.cfg_scale > 1 else 1
    k = num_train_timesteps(s.steps, t.timestep_fraction)
    recompute = config.model.activation_checkpointing
    passes = 3 + recompute + (1 if t.kl_coef > 0 else 0)  # forward, backward (2x), recompute, reference
    return sizes, k, cfg, passes


def _element(config: Config) -> int:
    return 2 if config.model.dtype == "bfloat16" or config.train.autocast == "bfloat16" else 4


def _padded(config: Config, video: int, text: int):
    """Tokens are padded to a multiple of the sequence pieces (Ulysses x TP under SP)."""
    p = config.parallel
    shards = p.ulysses * (p.tensor if p.sequence_parallel else 1)
    return -(-video // shards) * shards, -(-text // shards) * shards


def dit_flops(config: Config, world_size: int = 1, rollout_samples: Optional[float] = None,
              trained_pairs: Optional[float] = None, text_tokens: Optional[int] = None) -> Dict:
    """The DiT FLOPs per GPU of one data-parallel rank's work: rollout_samples samples
    through the T sampling steps (x2 under real CFG) and trained_pairs trained (sample,
    timestep) pairs, each `passes` forward-equivalents (x2 under CFG training). Defaults:
    the config's own iteration (local samples; kept samples x epochs x trained timesteps).
    estimate(), calibrate() and the measured benchmark (perf/benchmark.py) all count here."""
    model, dp, shape, video, text = _shape(config, world_size, text_tokens)
    video_pad, text_pad = _padded(config, video, text)
    fwd = forward_flops(model, video_pad, text_pad)
    sizes, k, cfg, passes = _work(config, model, dp)
    if rollout_samples is None:
        rollout_samples = sizes["local"]
    if trained_pairs is None:
        trained_pairs = sizes["kept"] * config.train.epochs * k
    group = config.parallel.tensor * config.parallel.ulysses
    rollout_forwards = rollout_samples * config.sampling.steps * cfg
    train_forwards = trained_pairs * (2 if config.train.cfg_training else 1)

    def split(forwards, per):
        out = {key: forwards * per * fwd[key] / group for key in ("linear", "attention")}
        return dict(out, total=out["linear"] + out["attention"])

    return {"model": model, "dp": dp, "group": group, "latent": shape, "video_tokens": video, "text_tokens": text,
            "tokens_padded": video_pad + text_pad, "forward": fwd, "sizes": sizes, "trained_timesteps": k, "cfg": cfg,
            "passes": passes, "rollout_forwards": rollout_forwards, "train_forwards": train_forwards,
            "rollout": split(rollout_forwards, 1), "train": split(train_forwards, passes)}


def peak_flops(config: Config, hw: Hardware) -> Tuple[float, str]:
    """The peak an MFU of `config` is measured against: TF32 for float32 models, else BF16
    (FP8 linears too: their MFU is quoted against the BF16 peak)."""
    return (hw.tf32_flops, "tf32") if _element(config) == 4 else (hw.bf16_flops, "bf16")


def _attention_plan(config: Config, model, shape, assumptions: Assumptions, tokens: int, text: int) -> Dict:
    """Per pass (rollout, train): the attention backend and, for sliding tile, the fraction
    of the dense attention blocks its mask computes at this shape."""
    from .calibration import sliding_tile_density

    grid = (-(-shape[1] // model.patch_size_t), shape[2] // model.patch_size, shape[3] // model.patch_size)
    plan = {}
    for name, chosen in (("rollout", assumptions.rollout_attention), ("train", assumptions.train_attention)):
        backend = chosen or config.model.attention
        entry = {"backend": backend}
        if backend == "sliding_tile" and assumptions.sta_speedup is None:  # a fixed speed-up needs no tiles
            entry.update(grid=list(grid), tile=list(assumptions.sta_tile), window=list(assumptions.sta_window),
                         density=sliding_tile_density(grid, tuple(assumptions.sta_tile), tuple(assumptions.sta_window),
                                                      tokens - math.prod(grid)))
        plan[name] = entry
    return plan


def _compute_times(work: Dict, plan: Dict, hw: Hardware, a: Assumptions, cal, fp8: bool, fp32: bool) -> Dict:
    """Seconds per GPU of the rollout's and the training's DiT passes, split into GEMM /
    attention / rest (calibrated) or linear / attention (peak x MFU)."""
    fwd, group, passes = work["forward"], work["group"], work["passes"]
    lin, att = fwd["linear"] / group, fwd["attention"] / group  # one forward of one sample, per GPU
    rollout_n, train_n = work["rollout_forwards"], work["train_forwards"]
    recompute = passes - 3 - (1 if work["reference"] else 0)
    peak = hw.tf32_flops if fp32 else hw.bf16_flops
    out = {}
    if cal is None:
        linear_peak = hw.fp8_flops if fp8 else peak
        for name, n, per, mfu in (("rollout", rollout_n, 1, a.rollout_mfu), ("train", train_n, passes, a.train_mfu)):
            attention = n * per * att / (peak * mfu)
            if plan[name]["backend"] == "sliding_tile":
                require(a.sta_speedup is not None, "perf model: sliding-tile attention needs a calibration "
                                                   "(--calibration) or a fixed --sta-speedup")
                attention /= a.sta_speedup
            out[name] = {"gemm": n * per * lin / (linear_peak * mfu), "attention": attention, "rest": 0.0}
        return out
    require(not fp32, "perf model: the calibration holds bf16 figures; model.dtype float32 has none")
    fp8_speedup = (cal.gemm_fp8_speedup or 1.0) if fp8 else 1.0  # GEMM only: quantisation not counted
    gemm_fwd, gemm_bwd = cal.gemm_forward_mfu * peak * fp8_speedup, cal.gemm_backward_mfu * peak * fp8_speedup
    hbm = hw.hbm_bytes_s

    def attention(pass_name, kind):
        """Seconds of one sample's attention on this GPU: kind forward | forward_backward."""
        backend = plan[pass_name]["backend"]
        flops = att * (1 + cal.backward_factor if kind == "forward_backward" else 1)
        if backend != "sliding_tile":
            return flops / (cal.attention(backend, kind) * peak)
        if a.sta_speedup is not None:  # a fixed speed-up over the dense kernel sdpa runs
            return flops / (cal.attention("sdpa", kind) * peak) / a.sta_speedup
        require(cal.sliding_tile is not None, f"perf model calibration {cal.name!r} has no sliding-tile figures")
        mfu = getattr(cal.sliding_tile, f"{kind}_mfu")
        return plan[pass_name]["density"] * flops / (mfu * peak)

    rest_fwd = lin * cal.rest_forward_bytes_per_flop / hbm
    out["rollout"] = {"gemm": rollout_n * lin / gemm_fwd, "attention": rollout_n * attention("rollout", "forward"),
                      "rest": rollout_n * rest_fwd}
    forward_backward = {"gemm": lin / gemm_fwd + 2 * lin / gemm_bwd, "attention": attention("train", "forward_backward"),
                        "rest": lin * cal.rest_train_bytes_per_flop / hbm}
    extra = recompute + (1 if work["reference"] else 0)  # recompute and reference forwards
    forward = {"gemm": lin / gemm_fwd, "attention": attention("train", "forward"), "rest": rest_fwd}
    out["train"] = {k: train_n * (forward_backward[k] + extra * forward[k]) for k in forward}
    return out


def estimate(config: Config, world_size: int, hw: Hardware, assumptions: Assumptions = Assumptions(),
             rates: Optional[Dict[str, float]] = None, calibration=None) -> Dict:
    """Per-iteration prediction (see the module docstring). rates: calibrated FLOP/s per
    GPU {"rollout", "train"} replacing peak x MFU (perf_model --calibrate of a benchmark);
    calibration: a perf.calibration.Calibration (GEMM, attention and memory-bound rates
    measured on a GPU) replacing peak x MFU."""
    assumptions.check()
    a = assumptions
    work = dit_flops(config, world_size, text_tokens=a.text_tokens)
    model, dp, shape, video, text = work["model"], work["dp"], work["latent"], work["video_tokens"], work["text_tokens"]
    p, s, t = config.parallel, config.sampling, config.train
    tp, u = p.tensor, p.ulysses
    group = tp * u
    tokens = work["tokens_padded"]
    text_pad = _padded(config, video, text)[1]
    fwd = work["forward"]
    sizes, k, cfg, passes = work["sizes"], work["trained_timesteps"], work["cfg"], work["passes"]
    rollout_forwards, trained = work["rollout_forwards"], work["train_forwards"]
    work["reference"] = t.kl_coef > 0

    # compute per GPU
    rollout_flops = {key: work["rollout"][key] for key in ("linear", "attention")}
    train_flops = {key: work["train"][key] for key in ("linear", "attention")}
    fp32 = _element(config) == 4
    precision = "tf32" if fp32 else ("fp8 linears, bf16 attention" if config.model.fp8 else "bf16")
    plan = _attention_plan(config, model, shape, a, tokens, text_pad)
    if rates:
        split = {name: {"gemm": 0.0, "attention": 0.0, "rest": 0.0} for name in ("rollout", "train")}
        split["rollout"]["gemm"] = sum(rollout_flops.values()) / rates["rollout"]
        split["train"]["gemm"] = sum(train_flops.values()) / rates["train"]
    else:
        split = _compute_times(work, plan, hw, a, calibration, bool(config.model.fp8), fp32)
    rollout_compute, train_compute = (sum(split[name].values()) for name in ("rollout", "train"))

    # communication per GPU
    element = _element(config)
    tp_fwd = tp_bytes_per_forward(model, tokens, text_pad, tp, u, element)
    ul_fwd = ulysses_bytes_per_forward(model, tokens, tp, u, element)
    train_comm_passes = 2 + config.model.activation_checkpointing + (1 if t.kl_coef > 0 else 0)
    params_rank = parameter_counts(config, model)["parameters_per_rank"]
    grad_element = 2 if config.model.dtype == "bfloat16" else 4
    steps = t.updates_per_rollout * t.epochs
    comm = {
        "tp_rollout": rollout_forwards * tp_fwd, "ulysses_rollout": rollout_forwards * ul_fwd,
        "tp_train": trained * train_comm_passes * tp_fwd, "ulysses_train": trained * train_comm_passes * ul_fwd,
        "dp": steps * dp_bytes_per_step(params_rank, dp * u, grad_element),
    }
    comm["total"] = sum(comm.values())

    def link(span):
        inside = span <= hw.gpus_per_node
        bandwidth = (hw.nvlink_one_way if inside else hw.ib_bytes_s) * a.comm_efficiency
        return ("NVLink" if inside else "InfiniBand"), bandwidth

    links = {"tp": link(tp), "ulysses": link(group), "dp": link(world_size)}
    exposed = 1 - a.comm_overlap
    rollout_comm = comm["tp_rollout"] / links["tp"][1] + comm["ulysses_rollout"] / links["ulysses"][1]
    train_comm = comm["tp_train"] / links["tp"][1] + comm["ulysses_train"] / links["ulysses"][1]
    zero = dp * u if p.zero else 1
    masters = 8 if grad_element < 4 else 0  # float32 master weights read and written (MasterWeightAdamW)
    # moments read + written, master weights, grad / weight traffic of the owned shard; the norm reads every grad
    optimizer_bytes = params_rank / zero * (16 + masters + 3 * grad_element) + params_rank * grad_element
    hbm = {"optimizer": hw.hbm_bytes_s}
    memory_bound = {"sde_steps": 0.0, "log_prob": 0.0, "sta_mask": 0.0}
    if calibration is not None:  # memory-bound kernels at their measured fraction of HBM bandwidth
        frac = calibration.hbm_fraction
        hbm["optimizer"] = hw.hbm_bytes_s * frac["copy"]
        numel = math.prod(shape)  # one sample's latents; every GPU of a group runs the step on all of them
        memory_bound["sde_steps"] = sizes["local"] * s.steps * numel * 20 / (hw.hbm_bytes_s * frac["sde_step"])
        memory_bound["log_prob"] = trained * numel * 28 / (hw.hbm_bytes_s * frac["log_prob_fwd_bwd"])
        if "sliding_tile" in (plan["rollout"]["backend"], plan["train"]["backend"]) and calibration.sliding_tile:
            memory_bound["sta_mask"] = a.sta_mask_builds * calibration.sliding_tile.mask_build_at(tokens)

    # decode and rewards: split over the group (engine) or replicated; overlapped with sampling
    micro_batches = sizes["local"] // (config.rollout.micro_batch or sizes["local"])
    videos = sizes["local"] / (group if a.split_decode else 1)  # per GPU
    decode, reward = videos * a.decode_s, videos * a.reward_s
    reward_overlap = (micro_batches - 1) / micro_batches if a.reward_overlap is None else a.reward_overlap
    sampling = rollout_compute + exposed * rollout_comm + memory_bound["sde_steps"]
    hidden_reward = min(reward_overlap * reward, sampling)
    hidden_decode = min(a.decode_overlap * decode, sampling - hidden_reward)
    times = {
        "rollout_compute": rollout_compute, "rollout_comm": exposed * rollout_comm,
        "sde_steps": memory_bound["sde_steps"], "sta_mask": memory_bound["sta_mask"],
        "decode": decode - hidden_decode, "reward": reward - hidden_reward,
        "train_compute": train_compute, "log_prob": memory_bound["log_prob"], "train_comm": exposed * train_comm,
        "dp_grad_sync": comm["dp"] / links["dp"][1], "optimizer": steps * optimizer_bytes / hbm["optimizer"],
    }
    times["total"] = sum(times.values())
    memory = estimate_memory(config, world_size, model)
    samples = config.rollout.prompts_per_iteration * config.rollout.group_size
    mode = "rates" if rates else ("calibration" if calibration is not None else "peak x MFU")
    return {
        "inputs": {
            "model": model.variant, "hardware": hw.name, "world_size": world_size, "tensor": tp, "ulysses": u,
            "data": dp, "sequence_parallel": p.sequence_parallel, "zero": p.zero,
            "frames": config.data.frames, "height": config.data.height, "width": config.data.width,
            "latent": list(shape), "video_tokens": video, "text_tokens": text, "tokens_padded": tokens,
            "steps": s.steps, "cfg": cfg, "prompts": config.rollout.prompts_per_iteration,
            "group_size": config.rollout.group_size, "samples": samples, "local_samples": sizes["local"],
            "kept_samples": sizes["kept"], "trained_timesteps": k, "timestep_fraction": t.timestep_fraction,
            "optimizer_steps": steps, "activation_checkpointing": config.model.activation_checkpointing,
            "precision": precision, "parameters": parameter_counts(config, model)["parameters"],
            "parameters_per_rank": params_rank, "rollout_micro_batches": micro_batches,
        },
        "assumptions": {**asdict(assumptions), "rates": dict(rates) if rates else None,
                        "forward_equivalents_per_trained_timestep": passes, "compute": mode,
                        "calibration": calibration.name if calibration is not None else None,
                        "reward_overlap_used": reward_overlap},
        "attention": plan,
        "hardware": asdict(hw),
        "flops": {"forward_per_sample": fwd["total"], "attention_share": fwd["attention"] / fwd["total"],
                  "rollout_per_gpu": sum(rollout_flops.values()), "train_per_gpu": sum(train_flops.values()),
                  "rollout_achieved_per_gpu_s": sum(rollout_flops.values()) / rollout_compute,
                  "train_achieved_per_gpu_s": sum(train_flops.values()) / train_compute,
                  "rollout_mfu": sum(rollout_flops.values()) / rollout_compute / peak_flops(config, hw)[0],
                  "train_mfu": sum(train_flops.values()) / train_compute / peak_flops(config, hw)[0]},
        "compute_split_s": split,
        "comm_bytes_per_gpu": comm,
        "comm_per_forward_per_sample": {"tp": tp_fwd, "ulysses": ul_fwd},
        "links": {name: {"link": kind, "bytes_per_s": bandwidth} for name, (kind, bandwidth) in links.items()},
        "hidden_s": {"decode": hidden_decode, "reward": hidden_reward, "comm": a.comm_overlap * (rollout_comm + train_comm)},
        "time_s": times,
        "memory_bytes": memory,
        "memory_fits": memory["total"] <= hw.memory_bytes,
        "throughput": {"samples_per_s": samples / times["total"],
                       "gpu_hours_per_iteration": world_size * times["total"] / 3600},
    }


# ---- calibration ---------------------------------------------------------------------------------
BENCH_KEYS = ("rollout_batched_sps", "train_step_s")


def calibrate(config: Optional[Config], measurement: Dict, world_size: int = 1, hw: Optional[Hardware] = None) -> Dict:
    """Achieved FLOP/s per GPU of a measured run of `config`: rollout_batched_sps samples/s
    (the whole run), train_step_s seconds per optimizer step, optional rollout_sequential_sps
    (tools/bench_train.py --json; perf.benchmark.calibration_input turns tools/benchmark.py
    --json into the same keys). With hw: the implied MFU against its BF16 (TF32) peak.
    A tools/gpu_measure.py report (its own shapes; config unused) gives instead
    {"calibration": perf.calibration.Calibration, "mfu": its per-pass efficiencies}."""
    from .calibration import GPU_MEASURE_SCHEMA, from_gpu_measure

    if measurement.get("schema") == GPU_MEASURE_SCHEMA:
        cal = from_gpu_measure(measurement)
        return {"calibration": cal, "mfu": {"gemm_forward": cal.gemm_forward_mfu, "gemm_backward": cal.gemm_backward_mfu,
                                            "attention": cal.attention_mfu, "dit_forward": cal.dit.get("forward_mfu"),
                                            "dit_train_step": cal.dit.get("train_step_mfu")}}
    missing = [key for key in BENCH_KEYS if key not in measurement]
    require(not missing, f"perf model calibrate: the measurement lacks {', '.join(missing)} (keys found: "
                         f"{', '.join(sorted(measurement)) or 'none'}); give tools/bench_train.py or "
                         "tools/benchmark.py --json output")
    for key in BENCH_KEYS + ("rollout_sequential_sps",):
        if key in measurement:
            value = measurement[key]
            require(isinstance(value, (int, float)) and value > 0,
                    f"perf model calibrate: {key} must be a positive number; got {value!r}")
    one = dit_flops(config, world_size, rollout_samples=1, trained_pairs=0)
    k = one["trained_timesteps"]
    per_sample = one["rollout"]["total"]  # one sample's rollout FLOPs on one GPU
    per_step = dit_flops(config, world_size, rollout_samples=0, trained_pairs=one["sizes"]["per_update"] * k)
    # samples/s of the whole run -> of one data-parallel rank
    out = {"forward_flops_per_sample": one["forward"]["total"],
           "rollout_flops_s": measurement["rollout_batched_sps"] / one["dp"] * per_sample,
           "train_flops_s": per_step["train"]["total"] / measurement["train_step_s"]}
    if "rollout_sequential_sps" in measurement:
        out["rollout_sequential_flops_s"] = measurement["rollout_sequential_sps"] / one["dp"] * per_sample
    if hw is not None:
        peak = peak_flops(config, hw)[0]
        out["mfu"] = {key.replace("_flops_s", ""): value / peak for key, value in out.items() if key.endswith("_s")}
        out["peak"] = {"hardware": hw.name, "flops_s": peak}
    return out


def flop_rate(x: float) -> str:
    return f"{x / 1e12:.0f} TFLOP/s" if x >= 1e13 else f"{x / 1e9:.2f} GFLOP/s"


def format_report(r: Dict) -> str:
    """The human table of estimate()'s report."""
    i, a, f, c, t, m = r["inputs"], r["assumptions"], r["flops"], r["comm_bytes_per_gpu"], r["time_s"], \
        r["memory_bytes"]
    gb, gib = 1e9, 2 ** 30
    if a["compute"] == "rates":
        rate = "calibrated (measured FLOP/s)"
    elif a["compute"] == "calibration":
        rate = f"calibration {a['calibration']!r}"
    else:
        rate = f"peak x MFU ({a['rollout_mfu']:.0%} rollout, {a['train_mfu']:.0%} train)"
    links, split, hidden, att = r["links"], r["compute_split_s"], r["hidden_s"], r["attention"]

    def bw(name):
        return f"{links[name]['link']} {links[name]['bytes_per_s'] / gb:.0f} GB/s"

    def share(x):
        return f"{100 * x / t['total']:5.1f}%"

    def parts(name):
        p = split[name]
        if a["compute"] != "calibration":
            return ""
        return f"; GEMM {p['gemm']:.1f} + attention {p['attention']:.1f} + rest {p['rest']:.1f} s"

    def attention(name):
        e = att[name]
        if e["backend"] != "sliding_tile":
            return e["backend"]
        if a["sta_speedup"]:  # no window: its density is not used
            return f"sliding tile, x{a['sta_speedup']:g} fixed over dense sdpa"
        return f"sliding tile {tuple(e['tile'])} window {tuple(e['window'])}, {e['density']:.1%} of the blocks"

    where = "split over the group's GPUs" if a["split_decode"] else "on every GPU of the group (replicated)"
    rows = [
        ("rollout compute", t["rollout_compute"], f"{f['rollout_per_gpu'] / 1e15:.1f} PFLOP per GPU, "
                                                  f"{f['rollout_mfu']:.1%} MFU, attention {attention('rollout')}"
                                                  f"{parts('rollout')}"),
        ("sliding-tile masks", t["sta_mask"], f"{a['sta_mask_builds']} block-mask build(s) per iteration"),
        ("SDE steps (fused)", t["sde_steps"], "HBM-bound, at the measured fraction of HBM bandwidth"),
        ("rollout TP + Ulysses", t["rollout_comm"], f"{c['tp_rollout'] / gb:.0f} GB TP ({bw('tp')}), "
                                                    f"{c['ulysses_rollout'] / gb:.0f} GB Ulysses ({bw('ulysses')})"),
        ("VAE decode", t["decode"], f"{a['decode_s']:g} s per video {where}; {hidden['decode']:.1f} s hidden "
                                    f"behind sampling (decode overlap {a['decode_overlap']:.0%})"),
        ("rewards", t["reward"], f"{a['reward_s']:g} s per video; {hidden['reward']:.1f} s hidden behind sampling "
                                 f"(reward overlap {a['reward_overlap_used']:.0%}: async, "
                                 f"{i['rollout_micro_batches']} micro-batches)"),
        ("train compute", t["train_compute"], f"{f['train_per_gpu'] / 1e15:.1f} PFLOP per GPU, {f['train_mfu']:.1%} "
                                              f"MFU, attention {attention('train')}{parts('train')}"),
        ("log-prob (fused)", t["log_prob"], "forward + backward, HBM-bound"),
        ("train TP + Ulysses", t["train_comm"], f"{c['tp_train'] / gb:.0f} GB TP, {c['ulysses_train'] / gb:.0f} GB "
                                                "Ulysses"),
        ("gradient sync (ZeRO-1)", t["dp_grad_sync"], f"{c['dp'] / gb:.1f} GB ({bw('dp')})"),
        ("optimizer step", t["optimizer"], "AdamW, HBM-bound"),
    ]
    lines = [
        f"DanceGRPO iteration: {i['model']} on {i['world_size']} x {i['hardware']} "
        f"(tensor {i['tensor']} x ulysses {i['ulysses']} x data {i['data']}, "
        f"SP {'on' if i['sequence_parallel'] else 'off'}, "
        f"{i['precision']})",
        f"per sample  {i['frames']} x {i['height']} x {i['width']} -> latent {' x '.join(map(str, i['latent']))}: "
        f"{i['video_tokens']} video + {i['text_tokens']} text tokens; DiT forward {f['forward_per_sample'] / 1e12:.1f} "
        f"TFLOP ({f['attention_share']:.0%} attention)",
        f"iteration   {i['prompts']} prompts x {i['group_size']} = {i['samples']} samples x {i['steps']} steps"
        f"{' x 2 (CFG)' if i['cfg'] > 1 else ''}; training {i['kept_samples']} kept samples per data rank x "
        f"{i['trained_timesteps']} timesteps x {a['forward_equivalents_per_trained_timestep']:g} forward-equivalents, "
        f"{i['optimizer_steps']} optimizer steps",
        f"compute     {rate}: {flop_rate(f['rollout_achieved_per_gpu_s'])} rollout, "
        f"{flop_rate(f['train_achieved_per_gpu_s'])} training per GPU",
        "",
        f"{'stage':<24}{'seconds':>10}{'share':>8}  detail",
    ]
    for label, seconds, detail in rows:
        if seconds or label not in ("sliding-tile masks", "SDE steps (fused)", "log-prob (fused)"):
            lines.append(f"{label:<24}{seconds:10.{2 if seconds < 1 else 1}f}{share(seconds)}  {detail}")
    lines += [
        f"{'total':<24}{t['total']:10.1f}{'':>8}  {r['throughput']['samples_per_s']:.2f} samples/s, "
        f"{r['throughput']['gpu_hours_per_iteration']:.2f} GPU-hours per iteration",
        "",
        f"communication per GPU per iteration: {c['total'] / gb:.0f} GB (TP / Ulysses comm overlap "
        f"{a['comm_overlap']:.0%}, {hidden['comm']:.1f} s hidden; link efficiency {a['comm_efficiency']:.0%})",
        f"memory per GPU (dancegrpo_hpc.memory estimate): {m['total'] / gib:.1f} GiB of "
        f"{r['hardware']['memory_bytes'] / gib:.1f} GiB"
        f"{'' if r['memory_fits'] else '  -- DOES NOT FIT'} (parameters {m['parameters'] / gib:.1f}, gradients "
        f"{m['gradients'] / gib:.1f}, optimizer {m['optimizer'] / gib:.1f}, activations "
        f"{max(m['activations'], m['rollout_forward']) / gib:.1f})",
    ]
    if att["rollout"]["backend"] != att["train"]["backend"]:
        lines.append(f"note: rollout attention {att['rollout']['backend']} differs from training's "
                     f"{att['train']['backend']}: the old log-probs come from another function than the ones trained "
                     "(the engine runs one backend for both)")
    return "\n".join(lines)


__all__ = ["Assumptions", "forward_flops", "dit_flops", "peak_flops", "tp_bytes_per_forward", "ulysses_bytes_per_forward",
           "dp_bytes_per_step",
           "estimate", "calibrate", "format_report", "flop_rate", "BENCH_KEYS"]
