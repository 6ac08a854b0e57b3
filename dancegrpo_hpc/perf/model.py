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

Also: VAE decode and reward time as per-video constants on one GPU, spread over the
data-parallel rank's GPUs; the AdamW step as HBM traffic; memory per GPU from
dancegrpo_hpc.memory.estimate_memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

from ..checks import require
from ..config import Config, check_layout
from ..memory import batch_sizes, estimate_memory, latent_shape, model_config, parameter_counts, text_tokens, \
    video_tokens
from .hardware import Hardware


@dataclass(frozen=True)
class Assumptions:
    """What the model cannot know: achieved efficiencies and the cost of the non-DiT stages."""

    rollout_mfu: float = 0.45  # achieved / peak Tensor Core FLOP/s, no-grad sampling forwards
    train_mfu: float = 0.40  # the same for training (forward + backward + recompute)
    comm_efficiency: float = 0.70  # achieved / link bandwidth of NCCL collectives
    comm_overlap: float = 0.0  # fraction of TP / Ulysses communication hidden behind compute
    decode_s: float = 3.0  # VAE decode, seconds per video on one GPU
    reward_s: float = 0.25  # all reward models together, seconds per video on one GPU
    text_tokens: Optional[int] = None  # text tokens per sample; None: the padded length (256 for real data)

    def check(self) -> None:
        for name in ("rollout_mfu", "train_mfu", "comm_efficiency"):
            value = getattr(self, name)
            require(isinstance(value, (int, float)) and 0 < value <= 1,
                    f"perf model: {name} must lie in (0, 1]; got {value!r}")
        require(isinstance(self.comm_overlap, (int, float)) and 0 <= self.comm_overlap <= 1,
                f"perf model: comm_overlap must lie in [0, 1]; got {self.comm_overlap!r}")
        for name in ("decode_s", "reward_s"):
            value = getattr(self, name)
            require(isinstance(value, (int, float)) and value >= 0 and value == value,
                    f"perf model: {name} must be a number >= 0 (seconds per video); got {value!r}")
        require(self.text_tokens is None or (isinstance(self.text_tokens, int) and self.text_tokens >= 1),
                f"perf model: text_tokens must be a positive integer or None; got {self.text_tokens!r}")


# ---- FLOPs ---------------------------------------------------------------------------------------
def forward_flops(model, video: int, text: int) -> Dict[str, float]:
    """Matmul FLOPs of one DiT forward for one sample of `video` + `text` tokens:
    {"linear", "attention", "total"} (2 FLOPs per multiply-accumulate)."""
    require(video >= 1 and text >= 1, f"perf model: token counts must be >= 1; got video {video}, text {text}")
    d, m = model.hidden_size, model.mlp_hidden
    tokens = video + text
    patch = model.patch_size_t * model.patch_size ** 2
    replace = model.image_condition_type == "token_replace"  # AdaLN also for the clean first frame

    def embedder(width):  # MLPEmbedder: width -> d -> d
        return 2 * (width * d + d * d)

    per_token = 8 * d * d + 4 * d * m  # qkv 3d^2 + out d^2 + MLP 2dm, 2 FLOPs per MAC
    condition = embedder(256) * (2 if replace else 1) + embedder(model.pooled_projection_dim)
    condition += embedder(256) if model.guidance_embeds else 0
    embed = 2 * video * model.in_channels * patch * d
    refiner = (embedder(256) + embedder(model.text_embed_dim) + 2 * text * model.text_embed_dim * d
               + model.num_refiner_layers * (text * per_token + 2 * d * 2 * d))
    modulation = (model.num_layers * (2 + replace) * 2 * d * 6 * d
                  + model.num_single_layers * (1 + replace) * 2 * d * 3 * d)
    blocks = model.num_layers + model.num_single_layers
    head = 2 * d * 2 * d + 2 * video * d * patch * model.out_channels
    linear = condition + embed + refiner + modulation + blocks * tokens * per_token + head
    attention = 4 * d * (blocks * tokens ** 2 + model.num_refiner_layers * text ** 2)
    return {"linear": float(linear), "attention": float(attention), "total": float(linear + attention)}


# ---- communication -------------------------------------------------------------------------------
def tp_bytes_per_forward(model, tokens: int, text: int, tp: int, ulysses: int, element: int) -> float:
    """Bytes one GPU sends in Megatron TP collectives during one forward of one sample
    (tokens: video + text of the sample, text: its text tokens, for the refiner)."""
    if tp == 1:
        return 0.0
    ring = (tp - 1) / tp
    reduces = 2 * model.num_layers + model.num_single_layers  # all-reduce equivalents per forward
    block_bytes = reduces * 2 * ring * tokens / ulysses * model.hidden_size * element
    refiner_bytes = model.num_refiner_layers * 2 * 2 * ring * text * model.hidden_size * element
    return block_bytes + refiner_bytes


def ulysses_bytes_per_forward(model, tokens: int, tp: int, ulysses: int, element: int) -> float:
    """Bytes one GPU sends in Ulysses all-to-alls (q, k, v, out) during one forward of one sample."""
    if ulysses == 1:
        return 0.0
    local = tokens / ulysses * model.hidden_size / tp * element
    return (model.num_layers + model.num_single_layers) * 4 * (ulysses - 1) / ulysses * local


def dp_bytes_per_step(parameters_per_rank: int, ranks: int, element: int) -> float:
    """Bytes one GPU sends per optimizer step: ZeRO-1 reduce-scatter of the gradients and
    all-gather of the parameters over `ranks` (data x Ulysses) ranks."""
    if ranks == 1:
        return 0.0
    return 2 * (ranks - 1) / ranks * parameters_per_rank * element


# ---- the iteration -------------------------------------------------------------------------------
def _shape(config: Config, world_size: int, text_override: Optional[int] = None):
    """Model config, data-parallel size, (video, text) tokens per sample; raises InputError."""
    from ..validate import check_model

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


def estimate(config: Config, world_size: int, hw: Hardware, assumptions: Assumptions = Assumptions(),
             rates: Optional[Dict[str, float]] = None) -> Dict:
    """Per-iteration prediction (see the module docstring). rates: calibrated FLOP/s per
    GPU {"rollout", "train"} replacing peak x MFU."""
    assumptions.check()
    work = dit_flops(config, world_size, text_tokens=assumptions.text_tokens)
    model, dp, shape, video, text = work["model"], work["dp"], work["latent"], work["video_tokens"], work["text_tokens"]
    p, s, t = config.parallel, config.sampling, config.train
    tp, u = p.tensor, p.ulysses
    group = tp * u
    tokens = work["tokens_padded"]
    text_pad = _padded(config, video, text)[1]
    fwd = work["forward"]
    sizes, k, cfg, passes = work["sizes"], work["trained_timesteps"], work["cfg"], work["passes"]
    rollout_forwards, trained = work["rollout_forwards"], work["train_forwards"]

    # compute per GPU
    rollout_flops = {key: work["rollout"][key] for key in ("linear", "attention")}
    train_flops = {key: work["train"][key] for key in ("linear", "attention")}
    fp32 = _element(config) == 4
    attention_peak = hw.tf32_flops if fp32 else hw.bf16_flops
    linear_peak = hw.fp8_flops if config.model.fp8 else attention_peak
    precision = "tf32" if fp32 else ("fp8 linears, bf16 attention" if config.model.fp8 else "bf16")

    def compute_time(flops, mfu, rate):
        if rate is not None:
            return (flops["linear"] + flops["attention"]) / rate
        return flops["linear"] / (linear_peak * mfu) + flops["attention"] / (attention_peak * mfu)

    rates = rates or {}
    rollout_compute = compute_time(rollout_flops, assumptions.rollout_mfu, rates.get("rollout"))
    train_compute = compute_time(train_flops, assumptions.train_mfu, rates.get("train"))

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
        bandwidth = (hw.nvlink_one_way if inside else hw.ib_bytes_s) * assumptions.comm_efficiency
        return ("NVLink" if inside else "InfiniBand"), bandwidth

    links = {"tp": link(tp), "ulysses": link(group), "dp": link(world_size)}
    hidden = 1 - assumptions.comm_overlap
    rollout_comm = comm["tp_rollout"] / links["tp"][1] + comm["ulysses_rollout"] / links["ulysses"][1]
    train_comm = comm["tp_train"] / links["tp"][1] + comm["ulysses_train"] / links["ulysses"][1]
    zero = dp * u if p.zero else 1
    masters = 8 if grad_element < 4 else 0  # float32 master weights read and written (MasterWeightAdamW)
    # moments read + written, master weights, grad / weight traffic of the owned shard; the norm reads every grad
    optimizer_bytes = params_rank / zero * (16 + masters + 3 * grad_element) + params_rank * grad_element
    videos = sizes["local"] / group  # per GPU
    times = {
        "rollout_compute": rollout_compute, "rollout_comm": hidden * rollout_comm,
        "decode": videos * assumptions.decode_s, "reward": videos * assumptions.reward_s,
        "train_compute": train_compute, "train_comm": hidden * train_comm,
        "dp_grad_sync": comm["dp"] / links["dp"][1], "optimizer": steps * optimizer_bytes / hw.hbm_bytes_s,
    }
    times["total"] = sum(times.values())
    memory = estimate_memory(config, world_size, model)
    samples = config.rollout.prompts_per_iteration * config.rollout.group_size
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
            "parameters_per_rank": params_rank,
        },
        "assumptions": {**asdict(assumptions), "rates": dict(rates) or None,
                        "forward_equivalents_per_trained_timestep": passes},
        "hardware": asdict(hw),
        "flops": {"forward_per_sample": fwd["total"], "attention_share": fwd["attention"] / fwd["total"],
                  "rollout_per_gpu": sum(rollout_flops.values()), "train_per_gpu": sum(train_flops.values()),
                  "rollout_achieved_per_gpu_s": sum(rollout_flops.values()) / rollout_compute,
                  "train_achieved_per_gpu_s": sum(train_flops.values()) / train_compute},
        "comm_bytes_per_gpu": comm,
        "comm_per_forward_per_sample": {"tp": tp_fwd, "ulysses": ul_fwd},
        "links": {name: {"link": kind, "bytes_per_s": bandwidth} for name, (kind, bandwidth) in links.items()},
        "time_s": times,
        "memory_bytes": memory,
        "memory_fits": memory["total"] <= hw.memory_bytes,
        "throughput": {"samples_per_s": samples / times["total"],
                       "gpu_hours_per_iteration": world_size * times["total"] / 3600},
    }


# ---- calibration ---------------------------------------------------------------------------------
BENCH_KEYS = ("rollout_batched_sps", "train_step_s")


def calibrate(config: Config, measurement: Dict, world_size: int = 1, hw: Optional[Hardware] = None) -> Dict:
    """Achieved FLOP/s per GPU of a measured run of `config`: rollout_batched_sps samples/s
    (the whole run), train_step_s seconds per optimizer step, optional rollout_sequential_sps
    (tools/bench_train.py --json; perf.benchmark.calibration_input turns tools/benchmark.py
    --json into the same keys). With hw: the implied MFU against its BF16 (TF32) peak."""
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
    rate = "calibrated" if a["rates"] else f"peak x MFU ({a['rollout_mfu']:.0%} rollout, {a['train_mfu']:.0%} train)"
    links = r["links"]

    def bw(name):
        return f"{links[name]['link']} {links[name]['bytes_per_s'] / gb:.0f} GB/s"

    def share(x):
        return f"{100 * x / t['total']:5.1f}%"

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
        f"{'rollout compute':<24}{t['rollout_compute']:10.1f}{share(t['rollout_compute'])}  "
        f"{f['rollout_per_gpu'] / 1e15:.1f} PFLOP per GPU",
        f"{'rollout TP + Ulysses':<24}{t['rollout_comm']:10.1f}{share(t['rollout_comm'])}  "
        f"{c['tp_rollout'] / gb:.0f} GB TP ({bw('tp')}), {c['ulysses_rollout'] / gb:.0f} GB Ulysses ({bw('ulysses')})",
        f"{'VAE decode':<24}{t['decode']:10.1f}{share(t['decode'])}  {a['decode_s']:g} s per video on one GPU",
        f"{'rewards':<24}{t['reward']:10.1f}{share(t['reward'])}  {a['reward_s']:g} s per video on one GPU",
        f"{'train compute':<24}{t['train_compute']:10.1f}{share(t['train_compute'])}  "
        f"{f['train_per_gpu'] / 1e15:.1f} PFLOP per GPU",
        f"{'train TP + Ulysses':<24}{t['train_comm']:10.1f}{share(t['train_comm'])}  "
        f"{c['tp_train'] / gb:.0f} GB TP, {c['ulysses_train'] / gb:.0f} GB Ulysses",
        f"{'gradient sync (ZeRO-1)':<24}{t['dp_grad_sync']:10.1f}{share(t['dp_grad_sync'])}  "
        f"{c['dp'] / gb:.1f} GB ({bw('dp')})",
        f"{'optimizer step':<24}{t['optimizer']:10.2f}{share(t['optimizer'])}  AdamW, HBM-bound",
        f"{'total':<24}{t['total']:10.1f}{'':>8}  {r['throughput']['samples_per_s']:.2f} samples/s, "
        f"{r['throughput']['gpu_hours_per_iteration']:.2f} GPU-hours per iteration",
        "",
        f"communication per GPU per iteration: {c['total'] / gb:.0f} GB (comm overlap {a['comm_overlap']:.0%}, "
        f"link efficiency {a['comm_efficiency']:.0%})",
        f"memory per GPU (dancegrpo_hpc.memory estimate): {m['total'] / gib:.1f} GiB of "
        f"{r['hardware']['memory_bytes'] / gib:.1f} GiB"
        f"{'' if r['memory_fits'] else '  -- DOES NOT FIT'} (parameters {m['parameters'] / gib:.1f}, gradients "
        f"{m['gradients'] / gib:.1f}, optimizer {m['optimizer'] / gib:.1f}, activations "
        f"{max(m['activations'], m['rollout_forward']) / gib:.1f})",
    ]
    return "\n".join(lines)


__all__ = ["Assumptions", "forward_flops", "dit_flops", "peak_flops", "tp_bytes_per_forward", "ulysses_bytes_per_forward",
           "dp_bytes_per_step",
           "estimate", "calibrate", "format_report", "flop_rate", "BENCH_KEYS"]
