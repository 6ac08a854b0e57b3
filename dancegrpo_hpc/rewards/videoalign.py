"""VideoAlign / VideoReward (KwaiVGI): a Qwen2-VL-2B reward model scoring a video
and its prompt on three heads, VQ (visual quality), MQ (motion quality) and TA
(text alignment).

Model. Qwen2-VL (transformers Qwen2VLModel) with three special tokens
"<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>" appended to the tokenizer (the
embedding matrix sized to the checkpoint's) and rm_head = Linear(hidden, 1,
bias=False). Head h's raw score is rm_head(last hidden state at h's token);
the reward is (raw - mean_h) / std_h with the checkpoint's statistics.

Preprocessing (qwen-vl-utils' video path, on tensors):
  frames   n = frames / video_fps * fps (default 2 fps), at least 4, at most the
           video's frames, rounded down to an even count; evenly spaced
  resize   bicubic antialiased to Qwen2-VL's smart_resize: sides multiples of 28,
           pixels in [min_frame_pixels, max_frame_pixels] (default max 200704)
  normalise OpenAI CLIP mean/std, then Qwen2-VL's patch layout (14 x 14 patches,
           2 frames per temporal patch, 2 x 2 merge), done here in torch: transformers'
           Qwen2-VL video processor imports torchvision, which has no CPU build on our
           machines (the layout is tested against its PIL image processor)

Checkpoint (`path`, as released): model_config.json (data_config, inference_config
with the statistics, peft_lora_config) and checkpoint-<step>/ with either model.pth
(the full state dict, PEFT-wrapped or plain) or adapter_model.safetensors +
non_lora_state_dict.pth (LoRA, merged here without peft). The Qwen2-VL-2B-Instruct
directory (`base_path`) gives config, tokenizer and, for LoRA checkpoints, the
base weights.
"""

from __future__ import annotations

import glob
import inspect
import math
import os
import re
import threading
import weakref
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..checks import InputError, require
from .loading import (HF_MODEL_FILES, TOKENIZER_FILES, check_options, first_line, import_transformers,
                      load_pretrained, load_tokenizer, pick_device, pick_dtype, read_json, require_dir)
from .preprocess import CLIP_MEAN, CLIP_STD, check_videos, normalize, resize, sample_frame_indices, smart_resize

HEADS = ("VQ", "MQ", "TA")
SPECIAL_TOKENS = {"VQ": "<|VQ_reward|>", "MQ": "<|MQ_reward|>", "TA": "<|TA_reward|>"}
# Released normalisation statistics (VideoAlign inference_config); model_config.json overrides.
DEFAULT_STATS = {"VQ": (3.6757, 2.2476), "MQ": (1.1646, 1.3811), "TA": (2.8105, 2.5121)}

# The instruction around the prompt. It follows VideoAlign's "detailed_special" template
# in spirit (the prompt, then one special token per head, in the order VQ, MQ, TA) but is
# much shorter. For scores identical to VideoAlign's own inference, pass that template's
# text (VideoAlign prompt_template.py, DETAILED_PROMPT_WITH_SPECIAL_TOKEN) as
# options.prompt_template, or change this constant; "{prompt}" marks the prompt.
DEFAULT_TEMPLATE = ('Evaluate this AI-generated video for the text prompt "{prompt}". '
                    "Visual quality: <|VQ_reward|> Motion quality: <|MQ_reward|> Text alignment: <|TA_reward|>")
# Qwen2-VL's chat format for one user turn holding a video and text, with the generation prompt.
CHAT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|>{video}<|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n")
VIDEO_TOKEN = "<|video_pad|>"

FPS, MAX_FRAME_PIXELS = 2.0, 200704
MIN_FRAME_PIXELS = 128 * 28 * 28  # qwen-vl-utils VIDEO_MIN_PIXELS
MIN_FRAMES = 4  # qwen-vl-utils FPS_MIN_FRAMES
VIDEO_FPS = 24.0  # HunyuanVideo's frame rate; set options.video_fps for other generators


# ---------------------------------------------------------------------------------------------
# preprocessing


def videoalign_frame_count(total: int, video_fps: float, fps: float, temporal_patch: int = 2) -> int:
    """qwen-vl-utils' count: total / video_fps * fps, at least MIN_FRAMES, at most the
    video's frames, rounded down to a multiple of the temporal patch (min one patch)."""
    count = min(max(total / video_fps * fps, MIN_FRAMES), total)
    return max(temporal_patch, int(count // temporal_patch) * temporal_patch)


def patchify(frames: torch.Tensor, patch: int, temporal_patch: int,
             merge: int) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
    """Normalised frames [T, C, H, W] -> (Qwen2-VL flattened patches [t*h*w, C*tp*p*p], (t, h, w)).
    Frames are padded to a multiple of temporal_patch by repeating the last one, and
    patches are ordered so that each merge x merge block of neighbours is contiguous
    (the order Qwen2-VL's image and video processors produce)."""
    t_total, c, height, width = frames.shape
    require(height % (patch * merge) == 0 and width % (patch * merge) == 0,
            f"videoalign: frame size {height}x{width} must be a multiple of {patch * merge}")
    if t_total % temporal_patch:
        frames = torch.cat([frames, frames[-1:].expand(temporal_patch - t_total % temporal_patch, -1, -1, -1)])
    gt, gh, gw = frames.shape[0] // temporal_patch, height // patch, width // patch
    x = frames.reshape(gt, temporal_patch, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, c * temporal_patch * patch * patch), (gt, gh, gw)


# ---------------------------------------------------------------------------------------------
# checkpoint loading


def _strip_peft(key: str) -> Optional[str]:
    """PEFT wrapper names -> plain module names; None for PEFT's frozen copies."""
    if key.startswith("base_model.model."):
        key = key[len("base_model.model."):]
    if ".original_module." in key:
        return None  # modules_to_save keeps the trained copy under modules_to_save
    key = re.sub(r"\.modules_to_save\.[^.]+\.", ".", key)
    return key.replace(".base_layer.", ".")


def _to_backbone(key: str) -> Optional[str]:
    """Qwen2VLForConditionalGeneration names (old: model.layers / visual.*; new:
    model.language_model / model.visual) -> Qwen2VLModel names; None for lm_head
    (rewards read hidden states; Qwen2-VL-2B ties it to the embeddings)."""
    if key.startswith("lm_head."):
        return None
    for old, new in (("model.visual.", "visual."), ("model.language_model.", "language_model."),
                     ("visual.", "visual."), ("model.", "language_model.")):
        if key.startswith(old):
            return new + key[len(old):]
    return key


_LORA = re.compile(r"^(.*)\.lora_([AB])(?:\.[^.]+)?\.weight$")


def split_checkpoint(state: Mapping[str, torch.Tensor]):
    """-> (plain tensors by Qwen2VLModel / 'rm_head.weight' name, LoRA {module: {'A', 'B'}})."""
    plain, lora = {}, {}
    for raw, value in state.items():
        key = _strip_peft(raw)
        if key is None:
            continue
        m = _LORA.match(key)
        if m:
            module = _to_backbone(m.group(1))
            if module is not None:
                lora.setdefault(module, {})[m.group(2)] = value
            continue
        require("lora_" not in key,
                f"videoalign: unsupported LoRA tensor {raw!r} (only lora_A/lora_B of linear layers)")
        if key.startswith("rm_head."):
            plain[key] = value
            continue
        key = _to_backbone(key)
        if key is not None:
            plain[key] = value
    for module, pair in lora.items():
        require(set(pair) == {"A", "B"}, f"videoalign: LoRA of {module} lacks lora_{'B' if 'A' in pair else 'A'}")
    return plain, lora


def find_checkpoint(path: str, step: Optional[int]) -> str:
    """path/checkpoint-<step>, the highest step unless `step` is given; a directory that
    itself holds the weights also works."""
    if any(os.path.exists(os.path.join(path, f)) for f in ("model.pth", "adapter_model.safetensors")):
        return path
    found = {}
    for d in glob.glob(os.path.join(path, "checkpoint-*")):
        tail = os.path.basename(d).split("-", 1)[1]
        if tail.isdigit() and os.path.isdir(d):
            found[int(tail)] = d
    require(found, f"videoalign: options.path={path!r} holds no checkpoint-<step> directory (nor model.pth or "
                   f"adapter_model.safetensors); point it at the VideoReward download")
    if step is None:
        return found[max(found)]
    require(step in found, f"videoalign: options.step={step} not found in {path!r}; available: {sorted(found)}")
    return found[step]


def read_checkpoint(ckpt_dir: str) -> Tuple[Dict[str, torch.Tensor], Optional[dict]]:
    """The checkpoint's tensors, and adapter_config.json if it is a LoRA checkpoint."""
    full = os.path.join(ckpt_dir, "model.pth")
    adapter = os.path.join(ckpt_dir, "adapter_model.safetensors")
    non_lora = os.path.join(ckpt_dir, "non_lora_state_dict.pth")
    if os.path.exists(full):
        return _torch_load(full), None
    require(os.path.exists(adapter) and os.path.exists(non_lora),
            f"videoalign: {ckpt_dir!r} has neither model.pth nor adapter_model.safetensors + non_lora_state_dict.pth")
    from safetensors.torch import load_file

    state = dict(load_file(adapter))
    state.update(_torch_load(non_lora))
    config = os.path.join(ckpt_dir, "adapter_config.json")
    return state, (read_json(config) if os.path.exists(config) else {})


def _torch_load(path: str) -> Dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise InputError(f"videoalign: cannot read {path!r}: {first_line(exc)}") from None
    require(isinstance(state, Mapping), f"videoalign: {path!r} holds no state dict")
    return dict(state)


def lora_scale(lora_config: Mapping[str, Any], rank: int) -> float:
    """PEFT's merge scale: lora_alpha / r (alpha / sqrt(r) with rsLoRA)."""
    require("lora_alpha" in lora_config, "videoalign: LoRA checkpoint without lora_alpha (in model_config.json "
                                         "peft_lora_config or adapter_config.json); cannot merge it")
    alpha = float(lora_config["lora_alpha"])
    return alpha / math.sqrt(rank) if lora_config.get("use_rslora") else alpha / rank


class VideoAlignModel(nn.Module):
    """Qwen2-VL backbone + rm_head; forward gives the raw head scores [B, n_heads]."""

    def __init__(self, backbone: nn.Module, rm_head: nn.Linear, head_token_ids: Sequence[int]):
        super().__init__()
        self.backbone, self.rm_head = backbone, rm_head
        self.head_token_ids = list(head_token_ids)

    def forward(self, input_ids, attention_mask, pixel_values_videos, video_grid_thw) -> torch.Tensor:
        extra = {}
        if "mm_token_type_ids" in inspect.signature(self.backbone.forward).parameters:
            # transformers 5: video tokens marked 2 (text 0) for the 3D rotary positions, as its processor does
            extra["mm_token_type_ids"] = (input_ids == self.backbone.config.video_token_id).int() * 2
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                               pixel_values_videos=pixel_values_videos, video_grid_thw=video_grid_thw,
                               **extra).last_hidden_state
        picked = []
        for token in self.head_token_ids:
            hit = input_ids == token
            require(bool((hit.sum(1) == 1).all()), "videoalign: each prompt must hold each reward token once; "
                                                   "check options.prompt_template")
            picked.append(hidden[hit])  # [B, hidden]
        # the head is one dot product per token: run it in float32
        return self.rm_head(torch.stack(picked, dim=1).float()).squeeze(-1)  # [B, heads]


def load_videoalign_model(path: str, base_path: str, step: Optional[int] = None):
    """(VideoAlignModel in float32 on the CPU, tokenizer, model_config.json dict)."""
    where = "videoalign"
    transformers = import_transformers(where)
    saved = os.path.join(path, "model_config.json")
    model_config = read_json(saved) if os.path.isfile(saved) else {}
    ckpt_dir = find_checkpoint(path, step)
    tokenizer = load_tokenizer(where, base_path)
    # VideoAlign appends its reward tokens to Qwen2-VL's vocabulary, in this order.
    tokenizer.add_tokens([SPECIAL_TOKENS[h] for h in HEADS], special_tokens=True)
    try:
        config = transformers.AutoConfig.from_pretrained(base_path)
    except (OSError, ValueError) as exc:
        raise InputError(f"{where}: cannot read the Qwen2-VL config in base_path={base_path!r}: "
                         f"{first_line(exc)}") from None
    require(getattr(config, "model_type", None) == "qwen2_vl",
            f"{where}: base_path={base_path!r} is a {getattr(config, 'model_type', '?')!r} model; "
            f"VideoAlign needs Qwen2-VL (Qwen2-VL-2B-Instruct)")

    state, adapter_config = read_checkpoint(ckpt_dir)
    plain, lora = split_checkpoint(state)
    require("rm_head.weight" in plain, f"{where}: checkpoint {ckpt_dir!r} has no rm_head.weight; "
                                       f"it is not a VideoAlign reward checkpoint")
    rm_weight = plain.pop("rm_head.weight")
    text_config = getattr(config, "text_config", config)
    require(rm_weight.dim() == 2 and rm_weight.shape == (1, text_config.hidden_size),
            f"{where}: rm_head.weight has shape {tuple(rm_weight.shape)} but the Qwen2-VL config in "
            f"base_path needs (1, {text_config.hidden_size}) (output_dim 1 per reward token)")

    with torch.device("meta"):  # shapes and names only: no memory, no random init
        skeleton = transformers.Qwen2VLForConditionalGeneration(config).model
    hidden = text_config.hidden_size
    embed_key = next(k for k in skeleton.state_dict() if k.endswith("embed_tokens.weight"))
    rows = plain[embed_key].shape[0] if embed_key in plain else None
    if rows is not None:  # the checkpoint's vocabulary (Qwen2-VL's + the reward tokens) sizes the embeddings
        skeleton.set_input_embeddings(nn.Embedding(rows, hidden, device="meta"))
    expected = skeleton.state_dict()
    unknown = sorted(set(plain) - set(expected))
    require(not unknown, f"{where}: checkpoint key {unknown[:1]} is not a Qwen2-VL parameter of base_path's config")
    for key, value in plain.items():
        require(tuple(value.shape) == tuple(expected[key].shape),
                f"{where}: checkpoint key {key!r} has shape {tuple(value.shape)} but base_path's config expects "
                f"{tuple(expected[key].shape)}")

    if set(expected) <= set(plain):  # a full checkpoint: the base weights are not needed
        backbone = skeleton
        backbone.load_state_dict(plain, strict=True, assign=True)
        _materialise_buffers(backbone)
    else:  # LoRA or partial: start from Qwen2-VL's weights
        require_dir(where, "base_path", base_path, HF_MODEL_FILES)
        backbone = load_pretrained(where, transformers.Qwen2VLForConditionalGeneration, base_path,
                                   dtype=torch.float32).model
        if rows is not None:
            backbone.set_input_embeddings(nn.Embedding(rows, hidden))  # filled from the checkpoint below
        backbone.load_state_dict(plain, strict=False)

    if lora:
        lora_config = dict(model_config.get("peft_lora_config") or {})
        lora_config.update(adapter_config or {})
        params = dict(backbone.named_parameters())
        for module, pair in lora.items():
            require(f"{module}.weight" in params, f"{where}: LoRA targets {module!r}, not a Qwen2-VL linear layer")
            weight = params[f"{module}.weight"]
            a, b = pair["A"].float(), pair["B"].float()
            require(b.shape[0] == weight.shape[0] and a.shape[1] == weight.shape[1] and a.shape[0] == b.shape[1],
                    f"{where}: LoRA of {module} has shapes A {tuple(a.shape)}, B {tuple(b.shape)} that do not fit "
                    f"its weight {tuple(weight.shape)}")
            with torch.no_grad():
                weight.add_((b @ a) * lora_scale(lora_config, a.shape[0]))

    rows = backbone.get_input_embeddings().weight.shape[0]
    ids = tokenizer.convert_tokens_to_ids([SPECIAL_TOKENS[h] for h in HEADS])
    require(max(ids) < rows, f"{where}: the reward tokens get ids {ids} but the checkpoint's embeddings have "
                             f"{rows} rows; base_path's tokenizer does not match the checkpoint")
    rm_head = nn.Linear(text_config.hidden_size, 1, bias=False)
    with torch.no_grad():
        rm_head.weight.copy_(rm_weight.float())
    return VideoAlignModel(backbone.float(), rm_head, ids), tokenizer, model_config


def _materialise_buffers(module: nn.Module) -> None:
    """Buffers that no state dict holds (the rotary embeddings' inverse frequencies) are
    rebuilt off the meta device by re-running their owner's constructor on its own config."""
    for name, sub in module.named_modules():
        meta = [key for key, buf in sub.named_buffers(recurse=False) if buf.is_meta]
        if not meta:
            continue
        require(hasattr(sub, "config"), f"videoalign: internal: cannot rebuild the buffers of {name} "
                                        f"({type(sub).__name__}) off the meta device")
        with torch.device("cpu"):
            fresh = type(sub)(sub.config)
        for key in meta:
            sub.register_buffer(key, getattr(fresh, key), persistent=False)


# ---------------------------------------------------------------------------------------------
# scoring


class VideoAlignScorer:
    """Scores a batch on all three heads at once. One scorer is shared by the
    videoalign rewards of a run (videoalign_vq and videoalign_mq read the same
    forward): the last batches' scores are kept for the same videos tensor."""

    def __init__(self, model: VideoAlignModel, tokenizer, *, stats: Mapping[str, Tuple[float, float]],
                 fps: float = FPS, video_fps: float = VIDEO_FPS, max_frame_pixels: int = MAX_FRAME_PIXELS,
                 min_frame_pixels: int = MIN_FRAME_PIXELS, prompt_template: str = DEFAULT_TEMPLATE,
                 device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32):
        check_settings("videoalign", prompt_template, fps, video_fps, min_frame_pixels, max_frame_pixels)
        for h in HEADS:
            require(stats[h][1] > 0, f"videoalign: the {h} std of the checkpoint's statistics must be > 0")
        self.device, self.dtype = device or torch.device("cpu"), dtype
        self.model = model.to(device=self.device, dtype=dtype).eval().requires_grad_(False)
        self.model.rm_head.float()  # the head is one dot product: keep it exact
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"
        self.stats = {h: (float(stats[h][0]), float(stats[h][1])) for h in HEADS}
        self.fps, self.video_fps = float(fps), float(video_fps)
        self.max_frame_pixels, self.min_frame_pixels = int(max_frame_pixels), int(min_frame_pixels)
        self.prompt_template = prompt_template
        vision = model.backbone.config.vision_config
        self.patch, self.temporal_patch = vision.patch_size, vision.temporal_patch_size
        self.merge = vision.spatial_merge_size
        self._lock = threading.Lock()
        self._memo: List[Tuple[Any, int, Tuple[str, ...], Dict[str, torch.Tensor]]] = []

    def frames(self, video: torch.Tensor) -> torch.Tensor:
        """One video [F, 3, H, W] in [0, 1] -> normalised frames [n, 3, h, w] on the device."""
        total = video.shape[0]
        count = (videoalign_frame_count(total, self.video_fps, self.fps, self.temporal_patch)
                 if total >= self.temporal_patch else total)  # a 1-frame video: the patch repeats it
        frames = video.index_select(0, sample_frame_indices(total, count).to(video.device))
        size = smart_resize(*frames.shape[-2:], factor=self.patch * self.merge, min_pixels=self.min_frame_pixels,
                            max_pixels=self.max_frame_pixels)
        frames = resize(frames.to(self.device, torch.float32), size)
        return normalize(frames, CLIP_MEAN, CLIP_STD)

    def inputs(self, videos: torch.Tensor, prompts: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Model inputs for a batch: right-padded token ids with one <|video_pad|> per
        merged patch, the patches of all videos concatenated, and their grids."""
        patches, grids, texts = [], [], []
        for video, prompt in zip(videos, prompts):
            flat, grid = patchify(self.frames(video), self.patch, self.temporal_patch, self.merge)
            patches.append(flat)
            grids.append(grid)
            n_tokens = grid[0] * grid[1] * grid[2] // (self.merge ** 2)
            texts.append(CHAT.format(video=VIDEO_TOKEN * n_tokens,
                                     text=self.prompt_template.replace("{prompt}", prompt)))
        tokens = self.tokenizer(texts, padding=True, return_tensors="pt")
        return {"input_ids": tokens["input_ids"].to(self.device),
                "attention_mask": tokens["attention_mask"].to(self.device),
                "pixel_values_videos": torch.cat(patches).to(self.dtype),
                "video_grid_thw": torch.tensor(grids, device=self.device)}

    @torch.no_grad()
    def scores(self, videos: torch.Tensor, prompts: Sequence[str]) -> Dict[str, torch.Tensor]:
        """{'VQ', 'MQ', 'TA'} -> normalised float32 [B] on the CPU."""
        check_videos("videoalign", videos, prompts)
        key = tuple(prompts)
        with self._lock:  # one forward at a time; a second reward on the same batch reuses it
            for ref, version, prompts_seen, result in self._memo:
                if ref() is videos and version == videos._version and prompts_seen == key:
                    return result
            raw = self.model(**self.inputs(videos, prompts)).cpu()
            result = {h: (raw[:, i] - self.stats[h][0]) / self.stats[h][1] for i, h in enumerate(HEADS)}
            self._memo = [(weakref.ref(videos), videos._version, key, result)] + self._memo[:3]
            return result


class VideoAlignReward:
    """sum_h weights[h] * normalised score h; e.g. {'MQ': 1.0} or {'VQ': 1.0, 'MQ': 1.0}."""

    def __init__(self, name: str, scorer: VideoAlignScorer, weights: Mapping[str, float]):
        self.name, self.scorer, self.weights = name, scorer, dict(weights)

    def __call__(self, videos: torch.Tensor, prompts: Sequence[str], **conditioning: Any) -> torch.Tensor:
        scores = self.scorer.scores(videos, prompts)
        return sum(w * scores[h] for h, w in self.weights.items())

    def __repr__(self) -> str:
        return f"VideoAlignReward({self.name!r}, weights={self.weights})"


def check_settings(where: str, template: Any, fps: Any, video_fps: Any, min_pixels: Any, max_pixels: Any) -> None:
    """The scorer's settings, checked before any weights load."""
    require(isinstance(template, str), f"{where}: options.prompt_template must be a string; got {template!r}")
    for h in HEADS:
        require(template.count(SPECIAL_TOKENS[h]) == 1,
                f"{where}: options.prompt_template must hold {SPECIAL_TOKENS[h]} exactly once")
    require("{prompt}" in template, f"{where}: options.prompt_template must hold {{prompt}}")
    for field, value in (("fps", fps), ("video_fps", video_fps)):
        require(isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
                f"{where}: options.{field} must be a number > 0; got {value!r}")
    require(isinstance(min_pixels, int) and isinstance(max_pixels, int) and 0 < min_pixels <= max_pixels,
            f"{where}: need integers 0 < min_frame_pixels <= max_frame_pixels; got {min_pixels!r}, {max_pixels!r}")


_SCORERS: Dict[tuple, VideoAlignScorer] = {}
_SCORERS_LOCK = threading.Lock()


def head_weights(where: str, head: Any, heads: Any) -> Dict[str, float]:
    require(head is None or heads is None, f"{where}: give options.head or options.heads, not both")
    if heads is None:
        head = "VQ" if head is None else head
        require(head in HEADS, f"{where}: options.head must be one of {', '.join(HEADS)}; got {head!r}")
        return {head: 1.0}
    require(isinstance(heads, Mapping) and heads and set(heads) <= set(HEADS)
            and all(isinstance(w, (int, float)) and math.isfinite(w) for w in heads.values()),
            f"{where}: options.heads must map some of {', '.join(HEADS)} to finite weights, e.g. "
            f"{{VQ: 1.0, MQ: 1.0}}; got {heads!r}")
    return {h: float(w) for h, w in heads.items()}


_OPTIONS = ("path", "base_path", "step", "device", "dtype", "fps", "video_fps", "max_frame_pixels",
            "min_frame_pixels", "prompt_template", "normalize")


def build_videoalign(_fixed_head: Optional[str] = None, **options: Any) -> VideoAlignReward:
    """videoalign (options.head / options.heads pick the score) and videoalign_vq/_mq/_ta
    (one head each). options: path (VideoReward dir), base_path (Qwen2-VL-2B-Instruct dir),
    step, device, dtype, fps, video_fps, max_frame_pixels, min_frame_pixels,
    prompt_template, normalize (default true)."""
    where = "videoalign" if _fixed_head is None else f"videoalign_{_fixed_head.lower()}"
    check_options(where, options, _OPTIONS + (() if _fixed_head else ("head", "heads")))
    weights = {_fixed_head: 1.0} if _fixed_head else head_weights(where, options.get("head"), options.get("heads"))
    path = require_dir(where, "path", options.get("path"))
    base_path = require_dir(where, "base_path", options.get("base_path"), (("config.json",),) + TOKENIZER_FILES)
    step = options.get("step")
    require(step is None or (isinstance(step, int) and step >= 0),
            f"{where}: options.step must be an int >= 0; got {step!r}")
    find_checkpoint(path, step)  # a missing checkpoint fails before anything loads
    device = pick_device(where, options.get("device"))
    dtype = pick_dtype(where, options.get("dtype"), device)
    template = options.get("prompt_template", DEFAULT_TEMPLATE)
    normalise = options.get("normalize", True)
    require(isinstance(normalise, bool), f"{where}: options.normalize must be true or false; got {normalise!r}")
    saved = os.path.join(path, "model_config.json")
    data = (read_json(saved) if os.path.isfile(saved) else {}).get("data_config") or {}
    settings = dict(fps=options.get("fps", data.get("fps") or FPS), video_fps=options.get("video_fps", VIDEO_FPS),
                    max_frame_pixels=options.get("max_frame_pixels", data.get("max_frame_pixels") or MAX_FRAME_PIXELS),
                    min_frame_pixels=options.get("min_frame_pixels", MIN_FRAME_PIXELS))
    check_settings(where, template, settings["fps"], settings["video_fps"], settings["min_frame_pixels"],
                   settings["max_frame_pixels"])
    key = (os.path.realpath(path), os.path.realpath(base_path), step, str(device), str(dtype),
           tuple(sorted((k, repr(v)) for k, v in options.items() if k not in ("head", "heads"))))
    with _SCORERS_LOCK:
        scorer = _SCORERS.get(key)
        if scorer is None:
            model, tokenizer, model_config = load_videoalign_model(path, base_path, step)
            stats = dict(DEFAULT_STATS)
            inference = model_config.get("inference_config") or {}
            for h in HEADS:
                if f"{h}_mean" in inference and f"{h}_std" in inference:
                    stats[h] = (inference[f"{h}_mean"], inference[f"{h}_std"])
            if not normalise:
                stats = {h: (0.0, 1.0) for h in HEADS}
            scorer = VideoAlignScorer(model, tokenizer, stats=stats, prompt_template=template, device=device,
                                      dtype=dtype, **settings)
            _SCORERS[key] = scorer
    return VideoAlignReward(where, scorer, weights)
