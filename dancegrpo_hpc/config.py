"""One dataclass tree for a run: YAML file + dotted command-line overrides.

`load_config(path, overrides)` builds it; unknown keys and wrong types fail with
one line naming the dotted key. `Config.check()` validates what can be checked
without the world size or the file system; `check_paths(config)` is the one place
that looks at the file system; `check_layout(config, world_size)` adds
divisibility; `check_runnable(config)` is what the trainer checks before loading anything.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, get_args, get_origin, get_type_hints

import yaml

from .checks import InputError, check_choice, require
from .rewards.base import RewardSpec

SAMPLER_KINDS = ("dance", "flow", "cps")
SHIFT_MODES = ("fixed", "dynamic")
ALGORITHMS = ("dancegrpo", "flow_grpo")
DTYPES = ("float32", "bfloat16")
DATA_SOURCES = ("toy", "prompts")
# Mirrors of the model-side registries (attention.BACKENDS, distributed.spec.SPECS / FP8_RECIPES,
# hunyuan_video.model.ADALN_MODES), so a config is checked without importing GPU code;
# tests/test_config.py keeps them equal.
ATTENTION_BACKENDS = ("sdpa", "flash", "xformers", "te", "sliding_tile")
LAYER_SPECS = ("local", "transformer_engine")
FP8_RECIPES = ("delayed", "current", "block")  # Transformer Engine's
LOCAL_FP8_RECIPES = ("current", "delayed", "rowwise")  # torch._scaled_mm (distributed/fp8.py)
ADALN_MODES = ("replicated", "column")
# The real (HunyuanVideo) VAE: 4x in time ((F - 1) / 4 + 1 latent frames), 8x in space.
VIDEO_VAE_TIME, VIDEO_VAE_SPACE = 4, 8
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed


@dataclass
class ModelConfig:
    family: str = "hunyuan_video"  # the model family (models/family.py); model.path's _class_name must match it
    preset: str = "toy"  # a preset of the family (e.g. models/hunyuan_video/config.py)
    path: Optional[str] = None  # diffusers-format checkpoint directory; None = the toy checkpoint (preset toy only)
    dtype: str = "float32"  # parameter dtype; bfloat16 keeps fp32 optimizer moments in AdamW
    attention: str = "sdpa"  # sdpa | flash | xformers | te | sliding_tile
    layer_spec: str = "local"  # local | transformer_engine
    fp8: Optional[str] = None  # FP8 recipe: local (torch._scaled_mm): current | delayed | rowwise;
    #                            transformer_engine: delayed | current | block
    adaln: str = "replicated"  # replicated | column
    activation_checkpointing: float = 1.0  # fraction of blocks recomputed in the training backward
    compile: bool = False  # regional torch.compile of each DiT block (GPU; the first forward compiles, ~1 min)
    guidance: Optional[float] = None  # embedded guidance scale (CFG-distilled models, e.g. 6.018); x1000 into the DiT


@dataclass
class ParallelConfig:
    tensor: int = 1
    ulysses: int = 1
    sequence_parallel: bool = False
    zero: bool = True  # shard optimizer state over data-parallel ranks (ZeRO-1)
    # training ranks the config is written for (reward ranks not counted); when set, a launch of
    # another size is refused, and validate / tools/perf_model.py use it without --world-size
    world_size: Optional[int] = None


@dataclass
class DataConfig:
    source: str = "toy"  # toy: the embedded procedural world; prompts: a prompt file, text embeddings, real VAE
    frames: int = 8  # video frames (toy world) or latent-producing frames (real data: 4k + 1, 1 for images)
    height: int = 32
    width: int = 32
    eval_prompts: int = 8  # held-out prompts for the before/after evaluation
    prompts: Optional[str] = None  # source prompts: .txt / .jsonl / .csv prompt file (I2V: with an image column)
    embeddings: Optional[str] = None  # source prompts: text-embedding cache (tools/precompute_embeddings.py)
    text_encoder: Optional[str] = None  # source prompts: text encoder directory (encode on the fly instead of a cache)
    vae: Optional[str] = None  # source prompts: diffusers VAE directory (decode for the rewards, encode I2V images)
    reference_images: Optional[str] = None  # source prompts, I2V: folder the prompt file's image paths are relative to
    image_loader: str = "auto"  # I2V reference images: dali | pil | auto (DALI on GPUs where installed, else PIL)
    vae_tiling: bool = True  # VAE encode / decode in overlapping tiles above vae_tile_size pixels (bounds memory)
    vae_tile_size: int = 256  # tile edge in pixels (diffusers' default; multiple of 8)
    vae_tile_stride: int = 192  # tile step in pixels (<= vae_tile_size; the rest overlaps and is blended)


IMAGE_LOADERS = ("auto", "dali", "pil")
REAL_DATA_FIELDS = ("prompts", "embeddings", "text_encoder", "vae", "reference_images")
_DATA_DIRS = {"embeddings": "a cache folder written by tools/precompute_embeddings.py",
              "text_encoder": "the model family's diffusers root with its text encoders (text_encoder/, tokenizer/, "
                              "text_encoder_2/, tokenizer_2/, ...)",
              "vae": "the model family's diffusers VAE folder (e.g. <HunyuanVideo>/vae, <FLUX.1-dev>/vae)",
              "reference_images": "the folder the prompt file's image paths are relative to"}


@dataclass
class SamplingConfig:
    steps: int = 10  # T sampling steps per rollout
    shift: float = 3.0  # flow-matching schedule shift (shift_mode fixed)
    shift_mode: str = "fixed"  # fixed: `shift` (DanceGRPO); dynamic: the family's resolution-dependent shift (flow_grpo FLUX)
    kind: str = "dance"  # SDE step: dance | flow | cps
    eta: float = 0.3  # noise level
    cfg_scale: float = 1.0  # real classifier-free guidance (> 1 runs cond + uncond)


@dataclass
class RolloutConfig:
    prompts_per_iteration: int = 4  # global, split over data-parallel ranks
    group_size: int = 8  # G samples per prompt sharing one initial noise
    micro_batch: int = 0  # samples per DiT forward while sampling; 0 = every local sample at once
    buffer_device: str = "device"  # device | cpu (pinned on GPU machines)
    reward_workers: int = 2
    reward_ranks: int = 0  # torchrun ranks (the last ones) that only score rewards; 0 = on the training ranks


@dataclass
class TrainConfig:
    iterations: int = 30
    algorithm: str = "dancegrpo"  # dancegrpo: per-group std; flow_grpo: global std, zero-variance groups dropped
    lr: float = 1e-5
    lr_warmup: int = 0  # iterations of linear warmup
    weight_decay: float = 1e-4
    betas: Tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    updates_per_rollout: int = 1  # optimizer steps per rollout (the rollout is split into this many mini-batches)
    epochs: int = 1  # passes over the rollout
    micro_batch: int = 0  # samples per training forward; 0 = the whole local mini-batch
    timestep_fraction: float = 0.6  # tau: ceil(tau * (T - 1)) trained steps per sample
    clip_range: float = 1e-4
    adv_clip_max: float = 5.0
    best_of_n: int = 0  # keep the k/2 best and k/2 worst of each group; 0 = keep all
    kl_coef: float = 0.0  # Flow-GRPO's KL to the initial policy (needs a reference model copy)
    autocast: Optional[str] = None  # None | bfloat16
    ema_decay: Optional[float] = None  # EMA of the weights (used for evaluation when set)
    cfg_training: bool = False  # train through cond + uncond outputs (needs sampling.cfg_scale > 1)


@dataclass
class GuidanceConfig:
    """Euphonium: process-reward-gradient guided rollouts and process advantages."""

    process_reward: Optional[str] = None  # latent process reward model (rewards/process.py); null = off
    process_options: Dict[str, Any] = field(default_factory=dict)  # its factory's arguments
    scale: Optional[float] = None  # guidance strength lambda (fixed) ...
    beta: Optional[float] = None  # ... or lambda = eta^2 / (2 beta); neither: no guidance
    normalize: bool = True  # unit-RMS reward gradient per sample
    start: int = 0  # guided steps: start <= step < end
    end: Optional[int] = None  # null: to the last step
    internalise: bool = True  # log-probs under the unguided mean (Euphonium's default)
    process_advantage: float = 0.0  # weight of the process-advantage loss (dual mode when > 0)
    fraction: float = 1.0  # guided share of each group (the first round(fraction x G) samples; the rest plain)

    @property
    def guiding(self) -> bool:
        return self.scale is not None or self.beta is not None


@dataclass
class CheckpointConfig:
    every: int = 10  # iterations between checkpoints (and one at the end); 0 = only at the end
    keep_last: int = 2


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    progress: bool = True
    sample_grid: bool = True  # before/after GIF of held-out prompts


@dataclass
class EvalConfig:
    samples_per_prompt: int = 2  # fixed seeds per held-out prompt, ODE sampler
    every: int = 0  # iterations between held-out evaluations during training; 0 = before and after only


@dataclass
class Config:
    seed: int = 0
    output_dir: str = "runs/toy"
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: List[RewardSpec] = field(default_factory=lambda: [RewardSpec("toy_text_alignment", 1.0)])
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Checks that need no world size, weights or file system: choices, ranges and
        which fields go together (path existence: check_paths)."""
        m, s, r, t = self.model, self.sampling, self.rollout, self.train
        _check_finite(self, "")  # inf / nan in any float field (one update with lr=inf destroys the weights)
        require(isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed <= MAX_SEED,
                f"config: seed must be an integer in [0, 2^63 - 1]; got {self.seed!r}")
        from .models.family import family_names  # the registry's names (a light module: no model code)

        check_choice("config", "model.family", m.family, tuple(family_names()))
        check_choice("config", "model.dtype", m.dtype, DTYPES)
        check_choice("config", "model.attention", m.attention, ATTENTION_BACKENDS)
        check_choice("config", "model.layer_spec", m.layer_spec, LAYER_SPECS)
        _check_fp8(m)
        check_choice("config", "model.adaln", m.adaln, ADALN_MODES)
        check_choice("config", "data.source", self.data.source, DATA_SOURCES)
        check_choice("config", "sampling.kind", s.kind, SAMPLER_KINDS)
        check_choice("config", "sampling.shift_mode", s.shift_mode, SHIFT_MODES)
        check_choice("config", "rollout.buffer_device", r.buffer_device, ("device", "cpu"))
        check_choice("config", "train.algorithm", t.algorithm, ALGORITHMS)
        check_choice("config", "train.autocast", t.autocast, (None, "bfloat16"))
        _positive_int("sampling.steps", s.steps, minimum=2)
        _positive_int("rollout.group_size", r.group_size, minimum=2)
        if self.parallel.world_size is not None:
            _positive_int("parallel.world_size", self.parallel.world_size)
        _positive_int("rollout.prompts_per_iteration", r.prompts_per_iteration)
        _positive_int("train.iterations", t.iterations, minimum=0)
        _positive_int("train.lr_warmup", t.lr_warmup, minimum=0)
        _positive_int("eval.every", self.eval.every, minimum=0)
        _positive_int("train.updates_per_rollout", t.updates_per_rollout)
        _positive_int("train.epochs", t.epochs)
        _positive_int("rollout.micro_batch", r.micro_batch, minimum=0)
        _positive_int("train.micro_batch", t.micro_batch, minimum=0)
        _positive_int("rollout.reward_workers", r.reward_workers)
        _positive_int("rollout.reward_ranks", r.reward_ranks, minimum=0)
        _positive_int("checkpoint.every", self.checkpoint.every, minimum=0)
        _positive_int("checkpoint.keep_last", self.checkpoint.keep_last)
        _positive_int("eval.samples_per_prompt", self.eval.samples_per_prompt)
        _positive_int("data.eval_prompts", self.data.eval_prompts)
        for name in ("frames", "height", "width"):
            _positive_int(f"data.{name}", getattr(self.data, name))
        for name in ("eta", "shift"):
            _positive_float(f"sampling.{name}", getattr(s, name))
        _positive_float("sampling.cfg_scale", s.cfg_scale)
        for name in ("lr", "grad_clip", "clip_range", "adv_clip_max", "adam_eps"):
            _positive_float(f"train.{name}", getattr(t, name))
        if m.guidance is not None:
            _positive_float("model.guidance", m.guidance)
        require(0 < t.timestep_fraction <= 1, f"config: train.timestep_fraction must lie in (0, 1]; got {t.timestep_fraction!r}")
        require(0 <= m.activation_checkpointing <= 1,
                f"config: model.activation_checkpointing must lie in [0, 1]; got {m.activation_checkpointing!r}")
        if t.best_of_n:
            require(t.best_of_n % 2 == 0 and 2 <= t.best_of_n <= r.group_size,
                    f"config: train.best_of_n must be 0 or an even number in [2, rollout.group_size={r.group_size}]; "
                    f"got {t.best_of_n}")
        if t.ema_decay is not None:
            require(0 < t.ema_decay < 1, f"config: train.ema_decay must lie in (0, 1) or be null; got {t.ema_decay!r}")
        require(not t.cfg_training or s.cfg_scale > 1,
                "config: train.cfg_training trains through real CFG; set sampling.cfg_scale > 1 or cfg_training=false")
        require(t.kl_coef >= 0, f"config: train.kl_coef must be >= 0; got {t.kl_coef!r}")
        require(t.weight_decay >= 0, f"config: train.weight_decay must be >= 0; got {t.weight_decay!r}")
        for i, beta in enumerate(t.betas):
            require(0 <= beta < 1, f"config: train.betas[{i}] must lie in [0, 1) (AdamW's moment decay); got {beta!r}")
        require(self.rewards, "config: rewards is empty; name at least one reward (e.g. toy_text_alignment)")
        for i, spec in enumerate(self.rewards):
            spec.validate(f"config: rewards[{i}]")
        names = [spec.name for spec in self.rewards]
        require(len(set(names)) == len(names), f"config: rewards lists a name twice: {names}")
        require(m.path is not None or m.preset == "toy",
                f"config: model.path is required for preset {m.preset!r} (only the toy preset has a built-in "
                "checkpoint)")
        self._check_data()
        self._check_guidance()

    def _check_guidance(self) -> None:
        g = self.guidance
        if not g.guiding and g.process_advantage == 0:
            return
        require(g.process_reward is not None,
                "config: guidance.scale / beta / process_advantage need guidance.process_reward (e.g. toy_latent)")
        require(not (g.scale is not None and g.beta is not None),
                "config: give guidance.scale (a fixed lambda) or guidance.beta (lambda = eta^2 / (2 beta)), not both")
        require(g.scale is None or g.scale >= 0, f"config: guidance.scale must be >= 0; got {g.scale!r}")
        if g.beta is not None:
            _positive_float("guidance.beta", g.beta)
        require(g.process_advantage >= 0, f"config: guidance.process_advantage must be >= 0; got {g.process_advantage!r}")
        require(0 <= g.start and (g.end is None or g.start < g.end <= self.sampling.steps),
                f"config: guidance window must satisfy 0 <= start < end <= sampling.steps={self.sampling.steps}; "
                f"got start={g.start}, end={g.end}")
        require(not g.guiding or self.sampling.kind != "ode",
                "config: guidance steers stochastic steps; sampling.kind=ode has none")
        require(isinstance(g.fraction, (int, float)) and 0 < g.fraction <= 1,
                f"config: guidance.fraction must be in (0, 1]; got {g.fraction!r}")
        require(guided_per_group(g.fraction, self.rollout.group_size) >= 1,
                f"config: guidance.fraction={g.fraction} guides no sample of a group of "
                f"rollout.group_size={self.rollout.group_size}; raise it to >= {1 / self.rollout.group_size:.3g}")

    def _check_data(self) -> None:
        d = self.data
        if d.source == "toy":
            extra = [name for name in REAL_DATA_FIELDS if getattr(d, name) is not None]
            require(not extra, f"config: data.{extra[0] if extra else ''} is read only with data.source=prompts; "
                               "remove it or set data.source=prompts")
            return
        require(d.prompts is not None, "config: data.source=prompts needs data.prompts (a .txt / .jsonl / .csv prompt "
                                       "file)")
        require(d.vae is not None, "config: data.source=prompts needs data.vae (a diffusers VAE directory)")
        require(d.embeddings is not None or d.text_encoder is not None,
                "config: data.source=prompts needs data.embeddings (precomputed cache) or data.text_encoder")
        require(d.embeddings is None or d.text_encoder is None,
                "config: give data.embeddings (a precomputed cache) or data.text_encoder (encode on the fly), not both")
        require((d.frames - 1) % VIDEO_VAE_TIME == 0,
                f"config: data.frames must be 4k + 1 for the video VAE (1 for images, e.g. 53); got {d.frames}")
        check_choice("config", "data.image_loader", d.image_loader, IMAGE_LOADERS)
        for name in ("vae_tile_size", "vae_tile_stride"):
            value = getattr(d, name)
            _positive_int(f"data.{name}", value, minimum=VIDEO_VAE_SPACE)
            require(value % VIDEO_VAE_SPACE == 0, f"config: data.{name} must be a multiple of {VIDEO_VAE_SPACE}; "
                                                  f"got {value}")
        require(d.vae_tile_stride <= d.vae_tile_size,
                f"config: data.vae_tile_stride={d.vae_tile_stride} must be <= data.vae_tile_size={d.vae_tile_size} "
                "(tiles must overlap or touch)")
        for name in ("height", "width"):
            require(getattr(d, name) % (2 * VIDEO_VAE_SPACE) == 0,
                    f"config: data.{name} must be a multiple of {2 * VIDEO_VAE_SPACE} (VAE 8x, patch 2); "
                    f"got {getattr(d, name)}")

    def local_samples(self, data_parallel: int) -> int:
        return self.rollout.prompts_per_iteration // data_parallel * self.rollout.group_size


def guided_per_group(fraction: float, group_size: int) -> int:
    """How many samples of each group guidance steers (guidance.fraction)."""
    return int(round(fraction * group_size))


def check_layout(config: Config, world_size: int) -> int:
    """Divisibility of the run over `world_size` ranks; returns the data-parallel size."""
    p, r, t = config.parallel, config.rollout, config.train
    _positive_int("world size", world_size)
    _positive_int("parallel.tensor", p.tensor)
    _positive_int("parallel.ulysses", p.ulysses)
    model_parallel = p.tensor * p.ulysses
    require(world_size % model_parallel == 0,
            f"config: world size {world_size} is not divisible by parallel.tensor x parallel.ulysses = {model_parallel}")
    require(not p.sequence_parallel or p.tensor > 1, "config: parallel.sequence_parallel needs parallel.tensor > 1")
    dp = world_size // model_parallel
    require(r.prompts_per_iteration % dp == 0,
            f"config: rollout.prompts_per_iteration={r.prompts_per_iteration} must divide by the data-parallel size {dp} "
            f"(world {world_size} / (tensor {p.tensor} x ulysses {p.ulysses}))")
    samples = config.local_samples(dp)
    kept = samples // r.group_size * (t.best_of_n or r.group_size)
    if r.micro_batch:
        require(samples % r.micro_batch == 0,
                f"config: rollout.micro_batch={r.micro_batch} must divide the local samples per iteration ({samples})")
    require(kept % t.updates_per_rollout == 0,
            f"config: train.updates_per_rollout={t.updates_per_rollout} must divide the kept local samples ({kept})")
    if t.micro_batch:
        per_update = kept // t.updates_per_rollout
        require(per_update % t.micro_batch == 0,
                f"config: train.micro_batch={t.micro_batch} must divide the samples per update ({per_update})")
    return dp


def check_paths(config: Config) -> None:
    """The one place that looks at the file system: every configured path must exist.
    Skipped by `dancegrpo-hpc validate --no-check-paths` (cluster configs on a dev machine)."""
    m, d = config.model, config.data
    if m.path is not None:
        require(os.path.isdir(m.path), f"config: model.path {m.path!r} is not a directory; give a diffusers-format "
                                       "checkpoint directory (config.json + *.safetensors)")
    if d.prompts is not None:
        require(os.path.isfile(d.prompts), f"config: data.prompts {d.prompts!r} is not a file; give a prompt file")
    for name, what in _DATA_DIRS.items():
        path = getattr(d, name)
        if path is not None:
            require(os.path.isdir(path), f"config: data.{name} {path!r} is not a directory; give {what}")
    for i, spec in enumerate(config.rewards):
        for key, path in reward_paths(spec):
            require(os.path.exists(path), f"config: rewards[{i}] ({spec.name}): options.{key} {path!r} does not "
                                          "exist; give the reward model's local file or folder")


def reward_paths(spec: RewardSpec) -> List[Tuple[str, str]]:
    """(option, path) of a reward's options named `path` or `*_path`: local files or folders
    of its model, checked here before anything loads (the factory checks their contents)."""
    options = spec.options if isinstance(spec.options, dict) else {}
    return [(key, os.fspath(value)) for key, value in options.items()
            if (key == "path" or str(key).endswith("_path")) and isinstance(value, (str, os.PathLike))]


def check_runnable(config: Config) -> None:
    """What the trainer checks before it loads anything: every configured path exists
    (`validate --no-check-paths` may skip that, a run may not), reward model paths
    included; the rewards are registered; output_dir can be written. The real-data world
    then checks the files' contents against each other before loading weights."""
    check_paths(config)
    raw = os.environ.get("WORLD_SIZE", "1")
    check_world_size(config, int(raw) if raw.isdigit() else 1)
    check_output_dir(config.output_dir)
    _check_reward_names(config)
    if config.data.source == "prompts" and config.data.image_loader == "dali":
        from .extras import dali_installed

        require(dali_installed(), "config: data.image_loader=dali but NVIDIA DALI is not installed; "
                                  "pip install nvidia-dali-cuda120, or set data.image_loader=pil (or auto)")


def check_world_size(config: Config, launched: int) -> None:
    """parallel.world_size, when set, against the ranks launched (torchrun's WORLD_SIZE,
    reward ranks included)."""
    expected, pool = config.parallel.world_size, config.rollout.reward_ranks
    require(expected is None or launched - pool == expected,
            f"config: parallel.world_size={expected} but the launch has {launched} ranks"
            f"{f' ({launched - pool} training + rollout.reward_ranks={pool})' if pool else ''}; launch "
            f"{(expected or 0) + pool} (torchrun --nnodes x --nproc-per-node) or set parallel.world_size="
            f"{launched - pool}")


def check_output_dir(path: str) -> None:
    """output_dir exists (created here) and takes a file, so a run does not fail at its
    first metrics line or checkpoint after the models have loaded."""
    require(isinstance(path, str) and path != "", f"config: output_dir must be a folder path; got {path!r}")
    require(not os.path.isfile(path), f"config: output_dir {path!r} is a file; choose a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise InputError(f"config: output_dir {path!r} cannot be created ({exc.strerror}"
                         f"{_file_in_the_way(path)}); choose a writable folder") from None
    try:
        handle, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(handle)
        os.remove(probe)
    except OSError as exc:
        raise InputError(f"config: output_dir {path!r} is not writable ({exc.strerror}); choose a writable folder") \
            from None


def _file_in_the_way(path: str) -> str:
    """', <ancestor> is a file' when a parent of path is a plain file."""
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    return f": {parent} is a file" if os.path.isfile(parent) else ""


def _check_reward_names(config: Config) -> None:
    """Every reward (and the process reward) is registered: a typo is found before
    the models load, not after (their factories check options when they build)."""
    from .rewards import known_rewards

    known = known_rewards()
    for i, spec in enumerate(config.rewards):
        require(spec.name in known, f"config: rewards[{i}].name: unknown reward {spec.name!r}; known rewards: "
                                    f"{', '.join(known)}")
    if config.guidance.process_reward is not None:
        from .rewards.process import known_process_rewards

        names = known_process_rewards()
        require(config.guidance.process_reward in names,
                f"config: guidance.process_reward: unknown process reward {config.guidance.process_reward!r}; "
                f"known: {', '.join(names)}")


def _check_finite(node, where: str) -> None:
    """Every float in the config tree (dataclass fields, lists, tuples) is finite: YAML's
    .inf / .nan and overflowing literals (1e400) name their dotted key."""
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            _check_finite(getattr(node, f.name), f"{where}.{f.name}" if where else f.name)
    elif isinstance(node, (list, tuple)):
        for i, item in enumerate(node):
            _check_finite(item, f"{where}[{i}]")
    elif isinstance(node, float):
        require(math.isfinite(node), f"config: {where} must be a finite number; got {node!r}")


def _check_fp8(m: "ModelConfig") -> None:
    """model.fp8 must be a recipe of model.layer_spec: each spec has its own FP8 implementation."""
    recipes = {"local": LOCAL_FP8_RECIPES, "transformer_engine": FP8_RECIPES}
    if m.fp8 is None or m.fp8 in recipes[m.layer_spec]:
        return
    others = [spec for spec, names in recipes.items() if m.fp8 in names]
    hint = f"; {m.fp8!r} is a recipe of model.layer_spec={others[0]}" if others else ""
    raise InputError(f"config: model.fp8={m.fp8!r} is not a recipe of model.layer_spec={m.layer_spec} (its recipes: "
                     f"{', '.join(recipes[m.layer_spec])}){hint}; or set model.fp8=null")


def _positive_int(name: str, value, minimum: int = 1) -> None:
    require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
            f"config: {name} must be an integer >= {minimum}; got {value!r}")


def _positive_float(name: str, value) -> None:
    require(isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and value == value,
            f"config: {name} must be a positive number; got {value!r}")


# ---------------------------------------------------------------------------------------------
# YAML and overrides

def _build(cls, data: Any, where: str):
    """A dataclass from a dict, strictly: unknown keys and wrong types name the key."""
    require(isinstance(data, dict), f"config: {where or 'top level'} must be a mapping; got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"config: unknown key {'.'.join(filter(None, [where, unknown[0]]))!r}; "
                         f"known keys{' under ' + where if where else ''}: {', '.join(sorted(known))}")
    values = {name: _coerce(hints[name], value, f"{where}.{name}" if where else name) for name, value in data.items()}
    return cls(**values)


def _coerce(hint, value, where: str):
    origin, args = get_origin(hint), get_args(hint)
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else _build(hint, value, where)
    if origin is type(None) or hint is type(None):
        require(value is None, f"config: {where} must be null")
        return None
    if origin is not None and type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)][0]
        return None if value is None else _coerce(inner, value, where)
    if origin in (list, List, Sequence):
        require(isinstance(value, (list, tuple)), f"config: {where} must be a list; got {value!r}")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (tuple, Tuple):
        require(isinstance(value, (list, tuple)) and len(value) == len(args),
                f"config: {where} must be a list of {len(args)} values; got {value!r}")
        return tuple(_coerce(a, v, where) for a, v in zip(args, value))
    if origin in (dict, Dict):
        require(isinstance(value, dict), f"config: {where} must be a mapping; got {value!r}")
        return dict(value)
    if hint is float:
        value = _yaml11_float(value)
        require(isinstance(value, (int, float)) and not isinstance(value, bool), f"config: {where} must be a number; got {value!r}")
        return float(value)
    if hint is int:
        require(isinstance(value, int) and not isinstance(value, bool), f"config: {where} must be an integer; got {value!r}")
        return value
    if hint is bool:
        require(isinstance(value, bool), f"config: {where} must be true or false; got {value!r}")
        return value
    if hint is str:
        require(isinstance(value, str), f"config: {where} must be a string; got {value!r}")
        return value
    return value


def _yaml11_float(value):
    """YAML 1.1 (PyYAML) reads `1e-5` as a string (it wants `1.0e-5`); take it as the number meant."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(data: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """`a.b.c=value` (value parsed as YAML: numbers, true/false, null, lists)."""
    for item in overrides:
        require("=" in item, f"config override {item!r} must look like key.sub=value (e.g. train.iterations=5)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        require(all(parts), f"config override {item!r}: empty key part")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            require(isinstance(node, dict), f"config override {item!r}: {part} is not a section")
        node[parts[-1]] = parse_yaml(raw, f"config override {item!r}", value=True) if raw.strip() else ""
    return data


def parse_yaml(text: str, where: str, value: bool = False):
    """yaml.safe_load, with a syntax error as one line: where, line and column, problem.
    value: text is an override's value (one line: the column alone)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        if mark is not None:
            line, column = mark.line + 1, mark.column + 1
        else:  # a ReaderError (a control character) knows only its offset
            offset = getattr(exc, "position", 0) or 0
            line = text.count("\n", 0, offset) + 1
            column = offset - (text.rfind("\n", 0, offset) + 1) + 1
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc).splitlines()[0]
        at = f"column {column} of the value" if value else f"line {line}, column {column}"
        raise InputError(f"{where}: malformed YAML at {at}: {' '.join(str(problem).split())}") from None


def _defaults_dict() -> Dict[str, Any]:
    return dataclasses.asdict(Config())


def _merge(base: Dict[str, Any], top: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_from_dict(data: Dict[str, Any], paths: bool = True) -> Config:
    """paths=False skips check_paths (a cluster config checked on another machine)."""
    merged = _merge(_defaults_dict(), data or {})
    if isinstance(merged.get("rewards"), list):
        merged["rewards"] = [_reward_spec(item, i) for i, item in enumerate(merged["rewards"])]
    config = _build(Config, merged, "")
    config.check()
    if paths:
        check_paths(config)
    return config


def _reward_spec(item, index: int) -> RewardSpec:
    if isinstance(item, RewardSpec):
        return item
    require(isinstance(item, dict) and "name" in item, f"config: rewards[{index}] must be a mapping with a name")
    return _build(RewardSpec, item, f"rewards[{index}]")


def load_config(path: Optional[str], overrides: Sequence[str] = (), paths: bool = True) -> Config:
    data: Dict[str, Any] = {}
    if path is not None:
        data = parse_yaml(_read_text(path), f"config file {path}") or {}
        require(isinstance(data, dict), f"config file {path}: top level must be a mapping")
    return config_from_dict(apply_overrides(data, overrides), paths=paths)


def _read_text(path: str) -> str:
    """A config file's text; missing, unreadable or non-UTF-8 files fail with one line."""
    require(os.path.isfile(path), f"config file {path!r} does not exist")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise InputError(f"config file {path!r} cannot be read ({exc.strerror})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise InputError(f"config file {path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); "
                         "save it as UTF-8") from None


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


__all__ = ["Config", "ModelConfig", "ParallelConfig", "DataConfig", "SamplingConfig", "RolloutConfig", "TrainConfig",
           "CheckpointConfig", "LoggingConfig", "EvalConfig", "GuidanceConfig", "load_config", "config_from_dict", "apply_overrides",
           "check_layout", "check_paths", "check_runnable", "check_world_size", "check_output_dir", "dump_yaml", "parse_yaml",
           "InputError"]
