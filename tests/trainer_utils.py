"""A small synthetic world on the tiny DiT for trainer tests: fast, and independent
of the committed toy checkpoint."""

from __future__ import annotations

import os
import tempfile

import torch

from dancegrpo_hpc.config import config_from_dict
from dancegrpo_hpc.data.world import World
from dancegrpo_hpc.rewards import register_reward
from dancegrpo_hpc.conditioning import Conditioning
from dancegrpo_hpc.testing.tiny_real import write_tiny_dit

LATENT = (4, 2, 4, 4)  # tiny preset: 4 channels, 2 frames, 4x4 latents (patch 2)
_MODEL_DIR = os.path.join(tempfile.gettempdir(), f"dancegrpo-test-tiny-dit-{os.getuid()}")


def brightness(videos, prompts):
    return videos.mean(dim=(1, 2, 3, 4))


def contrast(videos, prompts):
    return videos.std(dim=(1, 2, 3, 4))


register_reward("test_brightness", lambda **_: _Named("test_brightness", brightness), replace=True)
register_reward("test_contrast", lambda **_: _Named("test_contrast", contrast), replace=True)


class _Named:
    def __init__(self, name, fn):
        self.name, self.fn = name, fn

    def __call__(self, videos, prompts, **_):
        return self.fn(videos, prompts)


def tiny_model_dir() -> str:
    """A randomly initialised tiny DiT in diffusers layout, written once per machine
    (every rank and run loads the same weights, at any TP degree)."""
    if not os.path.exists(os.path.join(_MODEL_DIR, "config.json")):
        from dancegrpo_hpc.models.hunyuan_video.config import preset

        tmp = f"{_MODEL_DIR}.tmp{os.getpid()}"
        write_tiny_dit(tmp, preset("tiny").replace(guidance_embeds=False))
        try:
            os.replace(tmp, _MODEL_DIR)
        except OSError:  # another process won the race
            pass
    return _MODEL_DIR


class TinyWorld(World):
    def __init__(self, prompts=8, eval_prompts=2):
        self.train_prompts = [f"prompt {i}" for i in range(prompts)]
        self.eval_prompts = [f"held out {i}" for i in range(eval_prompts)]
        self.latent_shape = LATENT

    def encode(self, prompts, device, negative=False):
        embeds, pooled = [], []
        for p in prompts:
            g = torch.Generator().manual_seed(sum(map(ord, p)) * 7919 + len(p))
            embeds.append(torch.randn(6, 24, generator=g))
            pooled.append(torch.randn(12, generator=g))
        mask = torch.ones(len(prompts), 6, dtype=torch.long)
        mask[:, 4:] = 0
        cond = Conditioning(embeds=torch.stack(embeds).to(device), mask=mask.to(device), pooled=torch.stack(pooled).to(device))
        if negative:
            cond.negative = Conditioning(embeds=torch.zeros_like(cond.embeds), mask=mask.clone().to(device),
                                         pooled=torch.zeros_like(cond.pooled))
        return cond

    def decode(self, latents, cond=None):
        x = latents.float().cpu()
        video = torch.sigmoid(x[:, :3]).permute(0, 2, 1, 3, 4)  # [B, F, 3, H, W]
        return video.contiguous()

    def load_policy(self, **options):
        from dancegrpo_hpc.models.hunyuan_video.model import HunyuanVideoDiT

        return HunyuanVideoDiT.from_diffusers(tiny_model_dir(), **options)


def tiny_config(output_dir, **sections):
    """A fast config: 4 prompts x 4 samples, 4 steps, test rewards."""
    data = {
        "output_dir": str(output_dir),
        "model": {"preset": "tiny", "path": tiny_model_dir(), "activation_checkpointing": 0.5},
        "sampling": {"steps": 4, "shift": 3.0, "eta": 0.5},
        "rollout": {"prompts_per_iteration": 4, "group_size": 4},
        "rewards": [{"name": "test_brightness", "weight": 1.0}, {"name": "test_contrast", "weight": 0.5}],
        "train": {"iterations": 2, "lr": 1e-3, "timestep_fraction": 0.7},
        "checkpoint": {"every": 1},
        "logging": {"tensorboard": False, "progress": False, "sample_grid": False},
        "eval": {"samples_per_prompt": 2},
        "data": {"eval_prompts": 2},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return config_from_dict(data)
