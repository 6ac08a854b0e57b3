"""The tiny real-data world: every file examples/tiny_{t2v,i2v}_real.yaml read, as tiny
random-initialised components of the real classes (our DiT in diffusers format, diffusers'
AutoencoderKLHunyuanVideo, HunyuanVideo text encoders with offline tokenizers and the
embedding caches they write, prompt files, I2V reference images, a VideoAlign checkpoint
on a tiny Qwen2-VL). Written by tools/make_tiny_real.py for users and by
tests/test_real_path.py; seconds on a CPU, no hub access.

    write_tiny_real("runs/tiny_real")   # then: dancegrpo-hpc train examples/tiny_t2v_real.yaml

transformers / diffusers are imported inside the functions, so importing this is cheap.
"""

from __future__ import annotations

import json
import os
from typing import Any, List

import torch
import yaml

# where the tiny configs expect these files (relative to the working directory, as every config path)
CONFIG_PREFIX = "runs/tiny_real/"
T2V_PROMPTS = ["a red car moving left", "a dog running in the rain", "a bird flying over the river",
               "a small house near the mountain"]
I2V_PROMPTS = ["the cat jumping", "a green tree in the snow", "a fish in the river"]


def write_tiny_dit(directory, config, seed=1234) -> str:
    """A randomly initialised DiT of `config` saved in diffusers layout."""
    from ..models.hunyuan_video.model import HunyuanVideoDiT
    from ..models.hunyuan_video.weights import save_diffusers

    torch.manual_seed(seed)
    model = HunyuanVideoDiT(config)
    with torch.no_grad():  # zero-init output layers would make every sample identical: perturb them
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    save_diffusers(model, str(directory))
    return str(directory)


def write_tiny_vae(directory, seed=0, **changes) -> str:
    """A random diffusers AutoencoderKLHunyuanVideo of the real architecture, narrow (8
    channels per block, 4 latent channels), saved to directory; changes: config overrides."""
    from diffusers import AutoencoderKLHunyuanVideo

    config = dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=4)
    torch.manual_seed(seed)
    AutoencoderKLHunyuanVideo(**{**config, **changes}).save_pretrained(directory)
    return str(directory)


def write_images(directory, count, size=(40, 60)) -> List[str]:
    """PNG noise images larger than the video (load_images resizes and centre-crops); their names."""
    from PIL import Image

    os.makedirs(directory, exist_ok=True)
    g = torch.Generator().manual_seed(5)
    names = []
    for i in range(count):
        pixels = (torch.rand(*size, 3, generator=g) * 255).to(torch.uint8).numpy()
        names.append(f"ref{i}.png")
        Image.fromarray(pixels).save(os.path.join(directory, names[-1]))
    return names


def write_tiny_real(root) -> str:
    """Every tiny component under root, named as the tiny configs name them after CONFIG_PREFIX;
    returns root. The text encoders are kept too (data.text_encoder instead of the cache)."""
    from ..data.embedding_cache import write_embedding_cache
    from ..data.text_encoders import HunyuanTextEncoders
    from ..models.hunyuan_video.config import preset
    from .text_encoders import save_tiny_text_encoders
    from .videoalign import write_videoalign

    root = str(root)
    write_tiny_dit(os.path.join(root, "transformer"), preset("tiny"))
    write_tiny_dit(os.path.join(root, "i2v_transformer"), preset("tiny-i2v-32ch"))
    write_tiny_vae(os.path.join(root, "vae"))
    encoders_dir = save_tiny_text_encoders(os.path.join(root, "text_encoders"), hidden=24, pooled=12)
    encoders = HunyuanTextEncoders.from_pretrained(encoders_dir)
    with open(os.path.join(root, "prompts.txt"), "w") as f:
        f.write("\n".join(T2V_PROMPTS) + "\n")
    write_embedding_cache(os.path.join(root, "rl_embeddings"), encoders, T2V_PROMPTS)
    names = write_images(os.path.join(root, "i2v_reference_images"), len(I2V_PROMPTS))
    with open(os.path.join(root, "i2v_prompts.csv"), "w") as f:
        f.write("prompt,image\n" + "".join(f"{p},{n}\n" for p, n in zip(I2V_PROMPTS, names)))
    write_embedding_cache(os.path.join(root, "i2v_rl_embeddings"), encoders, I2V_PROMPTS)
    write_videoalign(root)
    return root


def repoint(node: Any, root) -> Any:
    """A config tree (dicts, lists, values) with every path under CONFIG_PREFIX moved to root."""
    if isinstance(node, dict):
        return {k: repoint(v, root) for k, v in node.items()}
    if isinstance(node, list):
        return [repoint(v, root) for v in node]
    if isinstance(node, str) and node.startswith(CONFIG_PREFIX):
        return os.path.join(str(root), node[len(CONFIG_PREFIX):])
    return node


def overrides(config_path, root) -> List[str]:
    """The dotted overrides (`dancegrpo-hpc train CONFIG ...`) that point a tiny config at
    root; none when root is the folder the config names already."""
    if os.path.abspath(str(root)) == os.path.abspath(CONFIG_PREFIX):
        return []
    with open(config_path) as f:
        data = yaml.safe_load(f)
    return _changed(data, repoint(data, root), "")


def _changed(old, new, prefix) -> List[str]:
    out = []
    for key, value in new.items():
        if value == old[key]:
            continue
        if isinstance(value, dict):
            out += _changed(old[key], value, f"{prefix}{key}.")
        else:  # a list (rewards) can only be replaced whole; JSON is YAML, as overrides are parsed
            out.append(f"{prefix}{key}={json.dumps(value) if isinstance(value, list) else value}")
    return out
