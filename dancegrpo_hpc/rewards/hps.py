"""HPS-v2.1 (Human Preference Score v2.1) as a transformers CLIPModel.

HPS-v2.1 is open_clip's ViT-H-14 fine-tuned on human preferences; its release
(HPS_v2.1_compressed.pt) holds {'state_dict': open_clip keys}. open_clip needs
torchvision, so the weights are converted to the transformers CLIP layout and
scored by clip.CLIPReward: score = image . text of normalised embeddings,
averaged over frames (HPS v2 inference; no logit scale).

The architecture (sizes, gelu activation, tokenizer) comes from a local
CLIP-ViT-H-14 directory in transformers format (laion/CLIP-ViT-H-14-laion2B-s32B-b79K:
config.json + tokenizer files); its weights are not read. Preprocessing is
open_clip's validation transform: bicubic resize of the shortest side to 224,
center crop 224, OpenAI CLIP mean/std.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Dict, Mapping, Tuple

import torch

from ..checks import InputError, require
from .clip import CLIPReward, frame_options
from .loading import (TOKENIZER_FILES, check_options, first_line, import_transformers, load_tokenizer, pick_device,
                      pick_dtype, require_dir, require_file)
from .preprocess import CLIP_MEAN, CLIP_STD, ImagePreprocess

HPS_FILE = "HPS_v2.1_compressed.pt"

# open_clip buffers that transformers rebuilds itself (the text tower's causal mask).
_IGNORED = {"attn_mask", "visual.attn_mask"}

_Transform = Callable[[torch.Tensor], torch.Tensor]
_copy: _Transform = lambda t: t
_transpose: _Transform = lambda t: t.t()  # open_clip computes x @ proj; nn.Linear computes x @ W.T


def _third(i: int) -> _Transform:
    """nn.MultiheadAttention packs q, k, v along dim 0 of in_proj_weight/in_proj_bias."""
    return lambda t: t.chunk(3, dim=0)[i]


_TOP = {  # transformers key -> (open_clip key, transform)
    "logit_scale": ("logit_scale", _copy),
    "text_projection.weight": ("text_projection", _transpose),
    "visual_projection.weight": ("visual.proj", _transpose),
    "text_model.embeddings.token_embedding.weight": ("token_embedding.weight", _copy),
    "text_model.embeddings.position_embedding.weight": ("positional_embedding", _copy),
    "vision_model.embeddings.class_embedding": ("visual.class_embedding", _copy),
    "vision_model.embeddings.patch_embedding.weight": ("visual.conv1.weight", _copy),
    "vision_model.embeddings.position_embedding.weight": ("visual.positional_embedding", _copy),
}
_NORMS = {"text_model.final_layer_norm": "ln_final", "vision_model.pre_layrnorm": "visual.ln_pre",
          "vision_model.post_layernorm": "visual.ln_post"}
_TOWERS = {"text_model.encoder.layers": "transformer.resblocks",
           "vision_model.encoder.layers": "visual.transformer.resblocks"}
_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
          "self_attn.out_proj": "attn.out_proj"}
_QKV = {"q_proj": 0, "k_proj": 1, "v_proj": 2}
_LAYER_KEY = re.compile(r"^(text_model\.encoder\.layers|vision_model\.encoder\.layers)\.(\d+)\.(.+)\.(weight|bias)$")


def open_clip_source(key: str) -> Tuple[str, _Transform]:
    """Where transformers CLIPModel parameter `key` comes from in an open_clip state dict."""
    if key in _TOP:
        return _TOP[key]
    module, _, leaf = key.rpartition(".")
    if module in _NORMS:
        return f"{_NORMS[module]}.{leaf}", _copy
    m = _LAYER_KEY.match(key)
    if m:
        tower, index, sub, leaf = m.groups()
        prefix = f"{_TOWERS[tower]}.{index}"
        if sub in _LAYER:
            return f"{prefix}.{_LAYER[sub]}.{leaf}", _copy
        if sub.startswith("self_attn.") and sub.split(".", 1)[1] in _QKV:
            return f"{prefix}.attn.in_proj_{leaf}", _third(_QKV[sub.split('.', 1)[1]])
    raise InputError(f"hps: transformers CLIP parameter {key!r} has no open_clip counterpart; "
                     f"the CLIP config is not a plain CLIP ViT (e.g. CLIP-ViT-H-14)")


def convert_open_clip_state_dict(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                                 where: str = "hps") -> Dict[str, torch.Tensor]:
    """open_clip CLIP state dict -> transformers CLIPModel state dict whose keys and
    shapes are those of `expected` (the target model's state_dict()). Every open_clip
    key must be used and every target key filled, with equal shapes."""
    state_dict = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    out, used = {}, set(_IGNORED)
    for key, target in expected.items():
        source, transform = open_clip_source(key)
        require(source in state_dict, f"{where}: checkpoint is missing key {source!r} (for {key}); "
                                      f"it must be an open_clip state dict of the architecture in clip_path")
        value = transform(state_dict[source])
        require(tuple(value.shape) == tuple(target.shape),
                f"{where}: checkpoint key {source!r} gives shape {tuple(value.shape)} but the CLIP config "
                f"expects {tuple(target.shape)} for {key}; clip_path must describe the checkpoint's architecture")
        out[key] = value.detach().clone().contiguous()
        used.add(source)
    extra = sorted(set(state_dict) - used)
    require(not extra, f"{where}: checkpoint has key(s) the CLIP config does not use: {', '.join(extra[:3])}"
                       f"{' ...' if len(extra) > 3 else ''}; clip_path must describe the checkpoint's architecture")
    return out


def load_open_clip_checkpoint(where: str, path: str) -> Dict[str, torch.Tensor]:
    """A .pt/.bin file holding {'state_dict': ...} or a plain state dict, or a .safetensors file."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            obj = load_file(path)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types; say which file and why
        raise InputError(f"{where}: cannot read checkpoint {path!r}: {first_line(exc)}") from None
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    require(isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()),
            f"{where}: checkpoint {path!r} holds no state dict of tensors (expected {{'state_dict': ...}} "
            f"or a plain state dict)")
    return dict(obj)


def clip_from_open_clip(where: str, config, state_dict: Mapping[str, torch.Tensor]):
    """A transformers CLIPModel of `config` carrying the open_clip weights. Built on the
    meta device (no random init of ~1B parameters), then the converted tensors are assigned."""
    transformers = import_transformers(where)
    # open_clip ViT-H-14 uses nn.GELU (exact erf), not OpenAI's quick_gelu.
    config.text_config.hidden_act = config.vision_config.hidden_act = "gelu"
    with torch.device("meta"):
        model = transformers.CLIPModel(config)
    converted = convert_open_clip_state_dict(state_dict, model.state_dict(), where)
    model.load_state_dict(converted, strict=True, assign=True)
    for module in model.modules():  # non-persistent buffers are not in any state dict
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf.is_meta:
                require(name == "position_ids", f"{where}: internal: buffer {name} of {type(module).__name__} "
                                                f"was not materialised")
                module.register_buffer(name, torch.arange(buf.shape[-1]).expand(buf.shape).clone(),
                                       persistent=False)
    return model


def build_hps(**options: Any) -> CLIPReward:
    """hps_v2.1. options: path (HPS_v2.1_compressed.pt, or a directory holding it),
    clip_path (transformers CLIP-ViT-H-14 dir: config.json + tokenizer), device, dtype,
    num_frames | fps + video_fps, image_batch."""
    name = "hps_v2.1"
    check_options(name, options, ("path", "clip_path", "device", "dtype", "num_frames", "fps", "video_fps",
                                  "image_batch"))
    frames = frame_options(name, options)
    path = options.get("path")
    if isinstance(path, (str, os.PathLike)) and os.path.isdir(path):
        path = os.path.join(path, HPS_FILE)
    path = require_file(name, "path", path)
    clip_path = require_dir(name, "clip_path", options.get("clip_path"), (("config.json",),) + TOKENIZER_FILES)
    device = pick_device(name, options.get("device"))
    dtype = pick_dtype(name, options.get("dtype"), device)
    transformers = import_transformers(name)
    try:
        config = transformers.CLIPConfig.from_pretrained(clip_path)
    except (OSError, ValueError) as exc:
        raise InputError(f"{name}: cannot read a CLIP config from clip_path={clip_path!r}: {first_line(exc)}") from None
    tokenizer = load_tokenizer(name, clip_path)
    model = clip_from_open_clip(name, config, load_open_clip_checkpoint(name, path))
    size = config.vision_config.image_size
    return CLIPReward(name, model, tokenizer, ImagePreprocess(size, size, CLIP_MEAN, CLIP_STD), device=device,
                      dtype=dtype, **frames)


__all__ = ["build_hps", "clip_from_open_clip", "convert_open_clip_state_dict", "load_open_clip_checkpoint",
           "open_clip_source"]
