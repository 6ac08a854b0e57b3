"""CLIP-family rewards: one implementation for CLIP score, PickScore and HPS-v2.1
(hps.py converts its open_clip weights into the same transformers CLIPModel).

Score of a video = mean over its sampled frames of
    scale * cos(image_embedding(frame), text_embedding(prompt))
with scale 1 (CLIP score, HPS-v2.1: image . text of normalised embeddings) or
logit_scale.exp() (PickScore, as its model card computes it).

Preprocessing per frame (CLIPImageProcessor / open_clip's val transform on tensors):
bicubic antialiased resize of the shortest side to `size`, center crop to
`crop_size`, normalise with the processor's mean/std (OpenAI CLIP's by default).
Frames: `num_frames` evenly spaced (default 8; an image is one frame), or `fps`
given the decoded video's `video_fps`.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import torch

from ..checks import InputError, require
from .loading import (HF_MODEL_FILES, TOKENIZER_FILES, check_options, import_transformers, load_pretrained,
                      load_tokenizer, pick_device, pick_dtype, read_json, require_dir)
from .preprocess import CLIP_MEAN, CLIP_STD, ImagePreprocess, check_videos, frame_count, sample_frames

DEFAULT_FRAMES = 8


class CLIPReward:
    """Scores videos [B, F, 3, H, W] in [0, 1] against their prompts with a
    transformers CLIPModel (eval, no grad). Returns float32 [B] on the CPU."""

    def __init__(self, name: str, model, tokenizer, preprocess: ImagePreprocess, *,
                 use_logit_scale: bool = False, num_frames: Optional[int] = DEFAULT_FRAMES,
                 fps: Optional[float] = None, video_fps: Optional[float] = None,
                 device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32, image_batch: int = 64):
        require(isinstance(image_batch, int) and image_batch >= 1,
                f"{name}: options.image_batch must be an int >= 1; got {image_batch!r}")
        frame_count(1, num_frames=num_frames, fps=fps, video_fps=video_fps)  # option errors now, not per batch
        self.name = name
        self.device = device or torch.device("cpu")
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.use_logit_scale = use_logit_scale
        self.num_frames, self.fps, self.video_fps = (None if fps is not None else num_frames), fps, video_fps
        self.image_batch = image_batch
        self.max_length = model.config.text_config.max_position_embeddings

    @torch.no_grad()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [0, 1] -> unit-norm float32 [N, D]."""
        out = []
        for chunk in images.split(self.image_batch):
            pixels = self.preprocess(chunk.to(self.device, torch.float32)).to(self.dtype)
            # vision tower -> pooled class token -> projection; the same on every transformers version
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output
            out.append(self.model.visual_projection(pooled).float())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> unit-norm float32 [B, D]; truncated to the text tower's 77 positions."""
        tokens = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        pooled = self.model.text_model(input_ids=tokens["input_ids"],
                                       attention_mask=tokens["attention_mask"]).pooler_output
        return torch.nn.functional.normalize(self.model.text_projection(pooled).float(), dim=-1)

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor, prompts: Sequence[str], **conditioning: Any) -> torch.Tensor:
        check_videos(self.name, videos, prompts)
        b, f = videos.shape[:2]
        frames = sample_frames(videos, frame_count(f, num_frames=self.num_frames, fps=self.fps,
                                                   video_fps=self.video_fps))
        image = self.image_embeddings(frames.flatten(0, 1)).view(b, frames.shape[1], -1)
        text = self.text_embeddings(prompts)
        score = (image * text[:, None]).sum(-1).mean(1)
        if self.use_logit_scale:
            score = score * self.model.logit_scale.float().exp()
        return score.cpu()

    def __repr__(self) -> str:
        return f"CLIPReward({self.name!r}, device={self.device}, dtype={self.dtype})"


def image_preprocess_from(processor_dir: Optional[str], image_size: int) -> ImagePreprocess:
    """Resize/crop/normalisation from a CLIPImageProcessor's preprocessor_config.json,
    read as data (no PIL or torchvision); the model's image size and OpenAI CLIP's
    statistics where the file or a field is absent."""
    cfg = {}
    if processor_dir is not None and os.path.isfile(os.path.join(processor_dir, "preprocessor_config.json")):
        cfg = read_json(os.path.join(processor_dir, "preprocessor_config.json"))

    def side(value, key):
        if isinstance(value, dict):  # {"shortest_edge": n} or {"height": h, "width": w}
            return int(value.get(key, value.get("height", image_size)))
        return int(value) if value is not None else image_size

    size = side(cfg.get("size"), "shortest_edge")
    crop = side(cfg.get("crop_size"), "height") if cfg.get("do_center_crop", True) else size
    return ImagePreprocess(resize_to=size, crop=crop, mean=tuple(cfg.get("image_mean", CLIP_MEAN)),
                           std=tuple(cfg.get("image_std", CLIP_STD)))


_COMMON = ("path", "device", "dtype", "num_frames", "fps", "video_fps", "image_batch")


def _build_from_dir(name: str, options: dict, use_logit_scale: bool) -> CLIPReward:
    """A transformers CLIPModel directory (`path`) with its tokenizer and preprocessor
    config in `processor_path` (default: the same directory)."""
    check_options(name, options, _COMMON + ("processor_path",))
    frames = frame_options(name, options)
    path = require_dir(name, "path", options.get("path"), HF_MODEL_FILES)
    processor_path = require_dir(name, "processor_path", options.get("processor_path", path), TOKENIZER_FILES)
    device = pick_device(name, options.get("device"))
    dtype = pick_dtype(name, options.get("dtype"), device)
    transformers = import_transformers(name)
    tokenizer = load_tokenizer(name, processor_path)
    model = load_pretrained(name, transformers.CLIPModel, path)
    preprocess = image_preprocess_from(processor_path, model.config.vision_config.image_size)
    return CLIPReward(name, model, tokenizer, preprocess, use_logit_scale=use_logit_scale, device=device,
                      dtype=dtype, **frames)


def frame_options(name: str, options: dict) -> dict:
    """The frame-sampling options, checked before any weights load."""
    out = {k: options[k] for k in ("fps", "video_fps", "image_batch") if k in options}
    out["num_frames"] = options.get("num_frames", None if "fps" in options else DEFAULT_FRAMES)
    try:
        frame_count(1, num_frames=out["num_frames"], fps=out.get("fps"), video_fps=out.get("video_fps"))
    except InputError as exc:
        raise InputError(f"{name}: options: {exc}") from None
    batch = out.get("image_batch", 1)
    require(isinstance(batch, int) and batch >= 1, f"{name}: options.image_batch must be an int >= 1; got {batch!r}")
    return out


def build_clip_score(**options: Any) -> CLIPReward:
    """clip_score: cosine similarity of CLIP image and text embeddings, mean over frames.
    options: path (CLIPModel dir), processor_path, device, dtype, num_frames | fps + video_fps, image_batch."""
    return _build_from_dir("clip_score", options, use_logit_scale=False)


def build_pickscore(**options: Any) -> CLIPReward:
    """pickscore: logit_scale.exp() * cosine (PickScore_v1 model card). path: the
    PickScore_v1 dir; processor_path: the CLIP-ViT-H-14-laion2B tokenizer/processor dir."""
    return _build_from_dir("pickscore", options, use_logit_scale=True)
