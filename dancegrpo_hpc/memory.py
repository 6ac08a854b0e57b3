"""Per-rank memory estimate of a run, from its config alone (no weights, no GPU).

    estimate_memory(config, world_size) -> {name: bytes per rank}

Assumptions (each term is one entry of the result):
- parameters: the model's parameter count on one TP rank (dit_parameters: its family's
  cost model, counted from the architecture, equal to the model built on the meta device),
  in model.dtype.
- gradients: as many as parameters, same dtype, counted as resident (the training
  peak holds them even though zero_grad(set_to_none) frees them between updates).
- optimizer: AdamW's two moments in float32 (8 bytes per parameter), plus float32
  master weights (4 bytes) when model.dtype is bfloat16 (rl/optim.MasterWeightAdamW),
  divided over dp x ulysses ranks under parallel.zero (ZeRO-1 over the data x
  context-parallel group).
- ema: a float32 copy of this rank's parameters when train.ema_decay is set.
- reference: a copy of the model in model.dtype when train.kl_coef > 0.
- rollout_latents: (T + 1) float32 latents per local sample (every Ulysses / TP
  rank keeps the whole latents of its data-parallel rank's samples), on the device
  or in pinned host memory as rollout.buffer_device says (host_pinned).
- rollout_log_probs: T float32 log-probs per local sample (always on the device).
- conditioning: per-sample text embeddings + pooled vector in float32 (doubled
  for the negative prompt under real CFG).
- activations: one training micro-batch forward + backward under activation
  checkpointing (formula at _activation_bytes); rollout_forward: one no-grad
  sampling micro-batch. Training and rollout alternate, so the total counts the
  larger of the two.
Not counted: CUDA context and kernels' workspaces, NCCL buffers, allocator
fragmentation, the VAE, text encoder and reward models (real data), so leave
headroom (10-20 GiB on an 80 GB GPU).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Dict, Tuple

from .checks import InputError, require
from .config import VIDEO_VAE_SPACE, VIDEO_VAE_TIME, Config, check_layout
from .models.family import family_of, get_family

GIB = 2**30
VIDEO_VAE_CHANNELS = 16  # the HunyuanVideo VAE's latent channels
TOY_SPATIAL_FACTOR = 2  # the toy VAE's 2x2 pixel-unshuffle (used when the toy package cannot be imported)
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2}

# Elements saved per token per hidden unit by one HunyuanVideo block for its backward
# (Korthikanti et al. 2022, "Reducing Activation Recomputation", with no dropout and
# flash/SDPA attention, so no S^2 term), adapted to AdaLN + qk-norm + RoPE:
# the two norms and their modulated outputs (4, replicated over TP unless Megatron SP
# splits them); q/k before the norm, before RoPE and after it, v, the attention output
# (8); the MLP's GELU input and fc2 input at ratio 4 (8). Single-stream blocks
# (attention and MLP side by side) save about the same.
BLOCK_NORM_ELEMENTS, BLOCK_SPLIT_ELEMENTS = 4, 16
# Live elements per token per hidden unit inside one block of a no-grad forward: the
# residual, the normed input and the 4x MLP hidden before and after GELU.
FORWARD_NORM_ELEMENTS, FORWARD_SPLIT_ELEMENTS = 2, 8


def model_config(config: Config):
    """The model config the run builds (its family's, models/family.py): model.path's
    config.json when it is there, the toy checkpoint's for preset toy, else the named preset."""
    with warnings.catch_warnings():  # a model package may import megatron-core, which warns that TE / Apex are absent
        warnings.simplefilter("ignore")
        family = get_family(config.model.family)
    name, path = config.model.preset, config.model.path
    if path is None and name == "toy":
        try:
            from .models.toy import TOY_CHECKPOINT
        except ImportError:  # the toy package is optional here: fall back to a registered "toy" preset
            TOY_CHECKPOINT = None
        path = TOY_CHECKPOINT
    if path is not None and os.path.isfile(os.path.join(path, "config.json")):
        with open(os.path.join(path, "config.json")) as f:
            return family.config_from_diffusers(json.load(f), variant=name)
    if name == "toy" and name not in family.presets():
        raise InputError(f"config: model.preset 'toy': the toy checkpoint {path!r} has no config.json; run "
                         "tools/pretrain_toy.py to create it")
    return family.preset(name)


def check_model(config: Config, model, shape) -> None:
    """What the model needs of the layout and the data (its family's check: heads over
    TP x Ulysses, widths over TP, the VAE's channels, a latent grid the patch divides)."""
    p, name = config.parallel, config.model.preset
    family = family_of(model)
    family.check_model(model, p.tensor, p.ulysses, shape, f"model.preset {name!r}")
    family.sampling_shift(model, shape, config.sampling.shift, config.sampling.shift_mode)
    require(config.data.reference_images is None or family.is_image_model(model),
            f"config: data.reference_images is set but model.preset {name!r} is not an image-to-video model")


def latent_shape(config: Config, model) -> Tuple[int, int, int, int]:
    """(C, F, H, W) of one sample's latents: the toy VAE's for the toy world, else the
    video VAE's (time 4x: (F - 1) / 4 + 1 latent frames; space 8x): its latent channels
    from data.vae's config.json when readable here, else the channels the DiT predicts."""
    d = config.data
    if d.source == "toy":
        try:
            from .models.toy import ToyVAE
        except ImportError:
            return (model.out_channels, d.frames, d.height // TOY_SPATIAL_FACTOR, d.width // TOY_SPATIAL_FACTOR)
        return tuple(ToyVAE().latent_shape(d.frames, d.height, d.width))
    frames = (d.frames - 1) // VIDEO_VAE_TIME + 1
    return (_vae_channels(d.vae, model.out_channels), frames, d.height // VIDEO_VAE_SPACE, d.width // VIDEO_VAE_SPACE)


def _vae_channels(path, default: int) -> int:
    file = os.path.join(path, "config.json") if path else ""
    if not os.path.isfile(file):  # a cluster path checked elsewhere (--no-check-paths): the run checks it
        return default
    with open(file) as f:
        return int(json.load(f).get("latent_channels", VIDEO_VAE_CHANNELS))


def text_tokens(config: Config, model) -> int:
    if config.data.source == "toy":
        from .models.toy import ToyTextEncoder

        return ToyTextEncoder(model.text_embed_dim, model.pooled_projection_dim).max_tokens
    return family_of(model).cost(model).text_tokens


def video_tokens(shape, model) -> int:
    """Image / video tokens of one sample of latent shape (C, F, H, W)."""
    return family_of(model).latent_tokens(model, shape)


def dit_parameters(model, tp: int = 1, adaln: str = "replicated") -> int:
    """Parameters of the model on one TP rank, counted from its structure by its family's
    cost model (tests hold it equal to the model built on the meta device)."""
    return family_of(model).cost(model).parameters(tp, adaln)


def parameter_counts(config: Config, model) -> Dict[str, int]:
    """total parameters and this TP rank's share."""
    return {"parameters": dit_parameters(model, 1, config.model.adaln),
            "parameters_per_rank": dit_parameters(model, config.parallel.tensor, config.model.adaln)}


def batch_sizes(config: Config, dp: int) -> Dict[str, int]:
    """Samples per data-parallel rank: per iteration, kept after best-of-N, per update,
    per training forward and per sampling forward (CFG runs cond + uncond as one batch)."""
    r, t = config.rollout, config.train
    local = config.local_samples(dp)
    kept = local // r.group_size * (t.best_of_n or r.group_size)
    per_update = kept // t.updates_per_rollout
    cfg = 2 if config.sampling.cfg_scale > 1 else 1
    return {"local": local, "kept": kept, "per_update": per_update,
            "train_forward": (t.micro_batch or per_update) * (2 if t.cfg_training else 1),
            "rollout_forward": (r.micro_batch or local) * cfg}


def _activation_bytes(config: Config, model, tokens: int, batch: int, training: bool) -> int:
    """Training (checkpointed fraction f of L blocks, TP t, Megatron SP, Ulysses u, s = S / u
    tokens per rank, element size e, micro-batch b):
        b * s * h * e * [ L * i  +  (L - n_ckpt + [n_ckpt > 0]) * c  +  2 * i ]
    i = 1/t with SP else 1 (a checkpointed block keeps only its input); c = 4 * i + 16 / t
    (a block's saved internals, above); the stored-internals term counts the blocks that
    are not checkpointed plus the one block being recomputed in backward; 2 * i is the
    gradient flowing in and out of that block. No-grad rollout forward: the internals of
    one block, b * s * h * e * (2 * i + 8 / t). Attention (flash / SDPA kernels) keeps only
    O(S) statistics, so no S^2 term."""
    p, m = config.parallel, config.model
    t, u = p.tensor, p.ulysses
    norm_split = t if p.sequence_parallel else 1
    e = 2 if (m.dtype == "bfloat16" or config.train.autocast == "bfloat16") else 4
    cost = family_of(model).cost(model)
    per_layer = math.ceil(tokens / u) * cost.hidden_size * batch * e
    blocks = cost.blocks
    if not training:
        return int(per_layer * (FORWARD_NORM_ELEMENTS / norm_split + FORWARD_SPLIT_ELEMENTS / t))
    checkpointed = math.floor(blocks * m.activation_checkpointing)
    inputs = 1 / norm_split
    internals = BLOCK_NORM_ELEMENTS / norm_split + BLOCK_SPLIT_ELEMENTS / t
    stored = blocks - checkpointed + (1 if checkpointed else 0)
    return int(per_layer * (blocks * inputs + stored * internals + 2 * inputs))


def estimate_memory(config: Config, world_size: int, model=None) -> Dict[str, int]:
    """Bytes per rank (see the module docstring). `total` is device memory; host_pinned
    is the rollout buffer when it lives in pinned host memory. `model`: the resolved
    HunyuanVideoConfig, when the caller has it already."""
    model = model if model is not None else model_config(config)
    dp = check_layout(config, world_size)
    p, t = config.parallel, config.train
    params = parameter_counts(config, model)["parameters_per_rank"]
    size = _DTYPE_BYTES[config.model.dtype]
    shape = latent_shape(config, model)
    tokens = video_tokens(shape, model) + text_tokens(config, model)
    sizes = batch_sizes(config, dp)
    steps = config.sampling.steps
    zero_ranks = dp * p.ulysses if p.zero else 1
    latents = sizes["local"] * (steps + 1) * math.prod(shape) * 4
    negative = 2 if config.sampling.cfg_scale > 1 else 1
    text = family_of(model).cost(model).conditioning_elements(text_tokens(config, model))
    out = {
        "parameters": params * size,
        "gradients": params * size,
        "optimizer": math.ceil(params * (8 if size == 4 else 12) / zero_ranks),
        "ema": params * 4 if t.ema_decay is not None else 0,
        "reference": params * size if t.kl_coef > 0 else 0,
        "rollout_latents": latents if config.rollout.buffer_device == "device" else 0,
        "rollout_log_probs": sizes["local"] * steps * 4,
        "conditioning": sizes["local"] * text * 4 * negative,
        "activations": _activation_bytes(config, model, tokens, sizes["train_forward"], training=True),
        "rollout_forward": _activation_bytes(config, model, tokens, sizes["rollout_forward"], training=False),
    }
    resident = sum(v for k, v in out.items() if k not in ("activations", "rollout_forward"))
    out["total"] = resident + max(out["activations"], out["rollout_forward"])
    out["host_pinned"] = latents if config.rollout.buffer_device == "cpu" else 0
    return out


# What lowers each term most directly (the memory check's advice names the largest term's).
_ADVICE = {
    "parameters": "raise parallel.tensor or use model.dtype=bfloat16",
    "gradients": "raise parallel.tensor or use model.dtype=bfloat16",
    "optimizer": "keep parallel.zero=true over more data-parallel ranks, or raise parallel.tensor",
    "ema": "unset train.ema_decay",
    "reference": "set train.kl_coef=0",
    "rollout_latents": "lower rollout.group_size / rollout.prompts_per_iteration / sampling.steps, or set "
                       "rollout.buffer_device=cpu",
    "rollout_log_probs": "lower rollout.group_size / rollout.prompts_per_iteration",
    "conditioning": "lower rollout.group_size / rollout.prompts_per_iteration",
    "activations": "set train.micro_batch to fewer samples per training forward, model.activation_checkpointing=1, "
                   "or fewer data.frames / height / width",
    "rollout_forward": "set a smaller rollout.micro_batch, or fewer data.frames / height / width",
}


def _size(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 2**20:.1f} MiB"


def available_ram() -> int:
    """Bytes of host memory a new allocation can take without swapping (Linux: MemAvailable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def available_memory(device) -> Tuple[int, str]:
    """(bytes, what) this rank can still allocate: free GPU memory on a CUDA device,
    available RAM on the CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free memory on GPU {device.index if device.index is not None else torch.cuda.current_device()}"
    return available_ram(), "available RAM on this machine"


def check_memory(config: Config, world_size: int, device, local_ranks: int = 1, available=None) -> Dict[str, int]:
    """Refuses a run whose per-rank estimate (estimate_memory, a lower bound: it leaves out
    the VAE, text encoders and reward models) exceeds what the device has free, before
    any weights load. On the CPU the `local_ranks` ranks of this machine share its RAM.
    available: (bytes, what), instead of asking the device (tests). Returns the estimate."""
    estimate = estimate_memory(config, world_size)
    cuda = str(device).startswith("cuda")
    # on a GPU the device holds `total`; on the CPU RAM holds it and the pinned buffer, for every local rank
    need = estimate["total"] if cuda else (estimate["total"] + estimate["host_pinned"]) * local_ranks
    have, what = available if available is not None else available_memory(device)
    if need <= have:
        return estimate
    terms = {k: v for k, v in estimate.items() if k not in ("total", "host_pinned")}
    if estimate["activations"] >= estimate["rollout_forward"]:
        terms.pop("rollout_forward")  # training and rollout alternate: only the larger one counts
    else:
        terms.pop("activations")
    largest = max(terms, key=terms.get)
    ranks = f" for {local_ranks} ranks on this machine" if not cuda and local_ranks > 1 else " per rank"
    raise InputError(
        f"memory: the run needs at least {_size(need)}{ranks} by the estimate (largest term: {largest} "
        f"{_size(terms[largest])}; `dancegrpo-hpc validate` lists them all) but {what} is {_size(have)}; "
        f"{_ADVICE[largest]}, or pass --no-memory-check if the estimate is wrong for this machine")


__all__ = ["estimate_memory", "check_memory", "available_memory", "model_config", "check_model", "latent_shape", "text_tokens", "video_tokens", "dit_parameters",
           "parameter_counts",
           "batch_sizes", "GIB"]
