"""The real-data world (data.source=prompts): prompts from a file, text conditioning
from a precomputed embedding cache or the HunyuanVideo text encoders, reference-image
latents for image-to-video, decoding by the diffusers HunyuanVideo VAE, and our DiT
loaded from a diffusers-format checkpoint.

Everything a run can get wrong is checked here before anything heavy loads: the
checkpoint against model.preset, the VAE against the DiT's channels and the video
size, every prompt against the cache, the reference images against the model.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

import torch

from ..checks import InputError, require
from ..extras import dali_installed
from ..models.family import family_of_class, get_family
from ..models.hunyuan_video.config import HunyuanVideoConfig
from ..conditioning import Conditioning
from .prompts import load_prompts, split_prompts
from .world import World

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _read_json(path: str, field: str, what: str) -> Dict:
    file = os.path.join(path, "config.json")
    require(os.path.isfile(file), f"config: {field} {path!r} has no config.json; give {what}")
    with open(file) as f:
        return json.load(f)


def checkpoint_config(config):
    """model.path's model config, which must be model.family's (its `_class_name`) and
    model.preset's architecture (the preset sizes validate and the memory estimate; the
    checkpoint is what runs)."""
    m = config.model
    family = get_family(m.family)
    raw = _read_json(m.path, "model.path", f"a diffusers {family.diffusers_class} folder")
    found_class = raw.get("_class_name")
    if found_class is not None and found_class != family.diffusers_class:
        try:
            other = f" (family {family_of_class(found_class).name!r})"
        except InputError:
            other = ""
        raise InputError(f"config: model.path holds a {found_class}{other} but model.family {m.family!r} loads "
                         f"{family.diffusers_class}; set model.family to the checkpoint's family")
    found = family.config_from_diffusers(raw, variant=m.preset)
    expected = family.preset(m.preset).replace(variant=m.preset)
    for key, value in expected.to_diffusers().items():
        got = found.to_diffusers()[key]
        require(got == value, f"config: model.path checkpoint has {key}={got!r} but model.preset {m.preset!r} has "
                              f"{value!r}; pick the preset of this checkpoint")
    return found


class _TextSource:
    """(embeds [N, L, D], mask [N, L], pooled [N, P]) per prompt, on CPU: from the cache
    (data.embeddings) or the text encoders run here (data.text_encoder)."""

    def __init__(self, config, device, dtype):
        d = config.data
        if d.embeddings is not None:
            from .embedding_cache import EmbeddingCache

            self.cache, self.encoders = EmbeddingCache.open(d.embeddings), None
        else:
            from .text_encoders import HunyuanTextEncoders

            self.cache = None
            self.encoders = HunyuanTextEncoders.from_pretrained(d.text_encoder, device=device, dtype=dtype,
                                                                field="data.text_encoder")

    def check(self, prompts: List[str], model: HunyuanVideoConfig, negative: bool) -> None:
        if self.cache is not None:
            known = set(self.cache.prompts)
            missing = [p for p in prompts if p not in known]
            if missing:
                raise InputError(f"config: data.embeddings holds no embedding for {len(missing)} prompt(s) of "
                                 f"data.prompts, the first: {missing[0][:60]!r}; rerun tools/precompute_embeddings.py "
                                 "on this prompt file")
        for embeds, _, pooled in [self.lookup(prompts[:1])] + ([self.negative()] if negative else []):
            require(embeds.shape[-1] == model.text_embed_dim and pooled.shape[-1] == model.pooled_projection_dim,
                    f"config: {self.field} gives text width {embeds.shape[-1]} and pooled width {pooled.shape[-1]} "
                    f"but the DiT takes {model.text_embed_dim} and {model.pooled_projection_dim}; use this model's "
                    "text encoders")

    @property
    def field(self) -> str:
        return "data.embeddings" if self.cache is not None else "data.text_encoder"

    def lookup(self, prompts: List[str]):
        out = self.cache.lookup(prompts) if self.cache is not None else self.encoders.encode(prompts)
        return tuple(t.cpu() for t in out)

    def negative(self):
        """The empty prompt (the unconditional branch of real CFG), batch 1."""
        return self.cache.negative() if self.cache is not None else self.lookup([""])


class PromptWorld(World):
    """data.source=prompts. encode() gives text conditioning and, for image-to-video
    models, the reference images' latents; decode() gives [B, F, 3, H, W] in [0, 1]."""

    def __init__(self, config, device="cpu"):
        from ..extras import require_extra
        from .reference_images import load_video_vae

        d, m = config.data, config.model
        # the VAE is diffusers' and the text encoders transformers': say so before anything loads
        require_extra(["diffusers"] + (["transformers"] if d.embeddings is None else []), "real",
                      "config: data.source=prompts")
        self.config, self.device = config, torch.device(device)
        # VAE and text encoders in the model's dtype on GPUs; float32 on CPUs (bf16 3D convolutions run 10x slower)
        self.aux_dtype = _DTYPES[m.dtype] if self.device.type == "cuda" else torch.float32
        self.model_config = checkpoint_config(config)
        self.image_model = get_family(m.family).is_image_model(self.model_config)
        # token_replace: the image latent is frame 0 of the video, the state only the frames after it
        self.image_frames = int(self.model_config.image_condition_type == "token_replace")
        prompts = load_prompts(d.prompts, image_root=d.reference_images)
        require(d.eval_prompts < len(prompts),
                f"config: data.eval_prompts={d.eval_prompts} leaves no prompt to train on: data.prompts has "
                f"{len(prompts)} prompts (after deduplication); set data.eval_prompts <= {len(prompts) - 1}")
        split = split_prompts(prompts, eval_count=d.eval_prompts, seed=config.seed)
        self.train_prompts, self.eval_prompts = list(split.train.prompts), list(split.eval.prompts)
        self.images = self._image_paths(split) if self.image_model else {}
        vae_config = _read_json(d.vae, "data.vae", "a diffusers AutoencoderKLHunyuanVideo folder")
        self.latent_shape = self._latent_shape(vae_config)
        self.text = _TextSource(config, self.device, self.aux_dtype)
        self.text.check(self.train_prompts + self.eval_prompts, self.model_config, config.sampling.cfg_scale > 1)
        # token_replace samples the frames after the image's; HunyuanVideo-I2V (latent_concat)
        # drops the decoded image frames, as diffusers' pipeline does
        self.drop_frames = vae_config.get("temporal_compression_ratio", 4) \
            if self.model_config.image_condition_type == "latent_concat" else 0
        # tiling splits only inputs above its tile size (and 16 frames): large videos, never small ones
        self.vae = load_video_vae(d.vae, self.device, self.aux_dtype, tiling=d.vae_tiling, tile_size=d.vae_tile_size,
                                  tile_stride=d.vae_tile_stride)
        # auto: DALI decodes on the GPU where it is installed; a few images per iteration decode as fast with PIL
        # on a CPU
        self.image_backend = d.image_loader if d.image_loader != "auto" else \
            ("dali" if self.device.type == "cuda" and dali_installed() else "pil")

    # ---- checks ---------------------------------------------------------------------------------
    def _image_paths(self, split) -> Dict[str, str]:
        name = self.config.model.preset
        require(split.train.reference_images is not None,
                f"config: model.preset {name!r} is image-to-video; data.prompts must be a .csv / .jsonl file with an "
                "`image` column (paths relative to data.reference_images)")
        out: Dict[str, str] = {}
        for part in (split.train, split.eval):
            for prompt, image in zip(part.prompts, part.reference_images):
                require(out.setdefault(prompt, image) == image,
                        f"config: data.prompts lists prompt {prompt[:60]!r} with two reference images; the trainer "
                        "keys images by prompt, so make each prompt's text unique")
        return out

    def _latent_shape(self, vae: Dict):
        d, model = self.config.data, self.model_config
        t, s = vae.get("temporal_compression_ratio", 4), vae.get("spatial_compression_ratio", 8)
        channels = vae.get("latent_channels", 16)
        require(channels == model.out_channels,
                f"config: data.vae has {channels} latent channels but model.path's DiT predicts {model.out_channels}; "
                "use the VAE of this model")
        require((d.frames - 1) % t == 0, f"config: data.frames must be {t}k + 1 for data.vae; got {d.frames}")
        for name in ("height", "width"):
            size = getattr(d, name)
            require(size % (s * model.patch_size) == 0,
                    f"config: data.{name}={size} must be a multiple of {s * model.patch_size} (VAE {s}x, patch "
                    f"{model.patch_size})")
        frames = (d.frames - 1) // t + 1
        return (channels, frames - self.image_frames, d.height // s, d.width // s)

    # ---- the World interface ------------------------------------------------------------------
    @torch.no_grad()
    def image_latents(self, prompts: List[str], device) -> torch.Tensor:
        """[N, C, 1, h, w]: the reference images, resized / cropped to the video size, VAE-encoded."""
        from .reference_images import encode_reference_images, load_images

        d = self.config.data
        images = load_images([self.images[p] for p in prompts], d.height, d.width, self.image_backend, self.device)
        return encode_reference_images(self.vae, images).float().to(device)

    @torch.no_grad()
    def encode(self, prompts: List[str], device, negative: bool = False) -> Conditioning:
        embeds, mask, pooled = self.text.lookup(prompts)
        image = self.image_latents(prompts, device) if self.image_model else None
        cond = Conditioning(embeds=embeds.float().to(device), mask=mask.to(device), pooled=pooled.float().to(device),
                            image_latents=image)
        if negative:
            n = len(prompts)
            ne, nm, npool = self.text.negative()
            cond.negative = Conditioning(embeds=ne.float().expand(n, -1, -1).to(device), mask=nm.expand(n, -1).to(device),
                                         pooled=npool.float().expand(n, -1).to(device), image_latents=image)
        return cond

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, cond: Optional[Conditioning] = None) -> torch.Tensor:
        z = latents.to(self.device, self.aux_dtype)
        if self.image_frames:
            require(cond is not None and cond.image_latents is not None,
                    "decode: token_replace latents need the conditioning's image latents (frame 0)")
            z = torch.cat([cond.image_latents.to(z), z], dim=2)
        return decode_latents(self.vae, z)[:, self.drop_frames:]

    def load_policy(self, **options):
        return get_family(self.config.model.family).from_diffusers(self.config.model.path, **options)


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents [B, C, f, h, w] -> videos [B, F, 3, H, W] in [0, 1], float32 on the CPU
    (diffusers' pipelines: latents / scaling_factor, decode, (x + 1) / 2)."""
    video = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    return ((video.float() + 1) / 2).clamp(0, 1).permute(0, 2, 1, 3, 4).cpu().contiguous()


__all__ = ["PromptWorld", "checkpoint_config", "decode_latents"]
