"""SD3 weights in diffusers' layout: load into a TP-sharded SD3DiT (each rank reads only its
slices), export back, save as a diffusers checkpoint folder.

The readers (sharded safetensors, state dicts), the Piece record and the config reader are the
joint-attention DiTs' (models/common/weights.py). SD3's own part is its plan, which says for
each of our tensors on TP rank r which slices of which diffusers tensors it is made of: the
fused q/k/v of the joint attention (to_q/k/v, add_q/k/v_proj) and of SD3.5 medium's attn2,
the row/column splits of the output projections and MLPs, and the position table, a buffer
that the checkpoints hold.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from ...checks import InputError, require
from ...distributed.lora import is_lora_parameter_name
from ...distributed.parallelize import parameter_name
from ...extras import import_extra
from ..common.weights import CONFIG_FILE, Piece, SafetensorsReader, StateDictReader, read_config

__all__ = ["export_state_dict", "load_diffusers", "load_weights", "plan", "save_diffusers", "tp_sharded"]

# our column-parallel linear in a block -> its diffusers sources, stacked on the output rows
COLUMN = {"attn.to_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
          "attn.add_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
          "attn2.to_qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
          "ff.fc1": ("ff.net.0.proj",), "ff_context.fc1": ("ff_context.net.0.proj",)}
# our row-parallel linear in a block -> its diffusers source (weight columns split, bias whole)
ROW = {"attn.to_out": "attn.to_out.0", "attn.to_add_out": "attn.to_add_out", "attn2.to_out": "attn2.to_out.0",
       "ff.fc2": "ff.net.2", "ff_context.fc2": "ff_context.net.2"}
ADALN = ("norm1.linear", "norm1_context.linear")  # column-parallel with adaln="column", else replicated
_IN_BLOCK = re.compile(r"(transformer_blocks\.\d+)\.(.+)\.(weight|bias)$")
POSITION_TABLE = "pos_embed.pos_embed"  # persistent buffer (when pos_embed_max_size is set)

Plan = Dict[str, Tuple[List[Piece], int]]


def _tensors(model, tensor_of: Optional[Callable] = None) -> Dict[str, torch.Tensor]:
    """Our checkpoint names -> tensors: the base parameters (LoRA adapters are not diffusers
    weights), or tensor_of of each, and with the weights (tensor_of None) the position table."""
    out = {parameter_name(k): (p if tensor_of is None else tensor_of(p)) for k, p in model.named_parameters()
           if not is_lora_parameter_name(k)}
    if tensor_of is None and getattr(model.pos_embed, "pos_embed", None) is not None:
        out[POSITION_TABLE] = model.pos_embed.pos_embed
    return out


def plan(model, rank: int) -> Plan:
    """our tensor name -> (pieces, dim along which they are concatenated) on TP rank `rank`.
    Every split is even over the TP ranks; the sizes come from our local shapes."""
    tp = model.ctx.layout.tp
    out: Plan = {}
    for name, tensor in _tensors(model).items():
        m = _IN_BLOCK.match(name)
        layer = m.group(2) if m else None
        if layer in COLUMN or (layer in ADALN and model.adaln == "column"):
            sources = COLUMN.get(layer, (layer,))
            step = tensor.shape[0] // len(sources)
            out[name] = ([Piece(f"{m.group(1)}.{s}.{m.group(3)}", 0, rank * step, (rank + 1) * step, step * tp)
                          for s in sources], 0)
        elif layer in ROW and m.group(3) == "weight":
            step = tensor.shape[1]
            out[name] = ([Piece(f"{m.group(1)}.{ROW[layer]}.weight", 1, rank * step, (rank + 1) * step, step * tp)], 1)
        elif layer in ROW:
            out[name] = ([Piece(f"{m.group(1)}.{ROW[layer]}.bias")], 0)
        else:
            out[name] = ([Piece(name)], 0)  # replicated, same name in diffusers
    return out


def _sharded(pieces: List[Piece], tp: int) -> bool:
    return tp > 1 and any(pc.dim is not None for pc in pieces)


def tp_sharded(model) -> List[bool]:
    """For each of model.parameters(): is it split over the TP group (rather than replicated)?
    From the weight plan; a LoRA factor by its own tensor_model_parallel mark."""
    rank_plan, tp = plan(model, model.ctx.tp_rank), model.ctx.layout.tp
    return [tp > 1 and bool(getattr(p, "tensor_model_parallel", False)) if is_lora_parameter_name(k)
            else _sharded(rank_plan[parameter_name(k)][0], tp) for k, p in model.named_parameters()]


# ---------------------------------------------------------------------------------- load
def load_weights(model, reader) -> None:
    """Copies this rank's slices of the checkpoint behind `reader` into the model, after
    checking that the checkpoint holds exactly the tensors the config needs, in its shapes."""
    where = f"{model.display_name} weights"
    wanted = plan(model, model.ctx.tp_rank)
    sources = {pc.source for pieces, _ in wanted.values() for pc in pieces}
    available = reader.names()
    for names, problem in ((sorted(sources - available), "lacks {n} tensors the model needs"),
                           (sorted(available - sources), "has {n} tensors this config does not use")):
        if names:
            raise InputError(f"{where}: the checkpoint {problem.format(n=len(names))}, e.g. {', '.join(names[:4])}; "
                             f"check that it is a {model.diffusers_class} with this config ({model.config.variant})")
    targets = _tensors(model)
    with torch.no_grad():
        for name, (pieces, dim) in wanted.items():
            for pc in pieces:
                if pc.dim is not None and reader.shape(pc.source)[pc.dim] != pc.size:
                    raise InputError(f"{where}: checkpoint tensor {pc.source} has shape {reader.shape(pc.source)} "
                                     f"but this config needs {pc.size} along dim {pc.dim}; check the config matches "
                                     "the checkpoint")
            value = torch.cat([reader.read(pc) for pc in pieces], dim=dim)
            target = targets[name]
            require(tuple(value.shape) == tuple(target.shape),
                    f"{where}: {name} needs shape {tuple(target.shape)} on this rank but the checkpoint gives "
                    f"{tuple(value.shape)}; check the config matches the checkpoint")
            target.copy_(value.to(target.dtype))


def load_diffusers(cls, model_or_path, **options):
    """Model class cls (SD3DiT) from a diffusers SD3Transformer2DModel or checkpoint folder."""
    if isinstance(model_or_path, (str, os.PathLike)):
        directory = os.fspath(model_or_path)
        require(os.path.isdir(directory), f"{cls.display_name} checkpoint {directory!r} is not a directory")
        config, reader = read_config(cls, directory), SafetensorsReader(directory, cls.display_name)
    else:
        require(cls.diffusers_class in {c.__name__ for c in type(model_or_path).__mro__},
                f"{cls.__name__}.from_diffusers: got a {type(model_or_path).__name__}, not a {cls.diffusers_class}")
        config = cls.config_class.from_diffusers(dict(model_or_path.config), variant=type(model_or_path).__name__)
        reader = StateDictReader(model_or_path.state_dict())
    model = cls(config, init_weights=False, **options)
    load_weights(model, reader)
    model.checkpoint_bytes_read = getattr(reader, "bytes_read", None)
    return model


# ---------------------------------------------------------------------------------- export
def export_state_dict(model, tensor_of: Optional[Callable] = None) -> Dict[str, torch.Tensor]:
    """diffusers-named full tensors on every rank (collective over the TP group): the weights
    with the position table, or tensor_of of each parameter (e.g. lambda p: p.grad)."""
    tp = model.ctx.layout.tp
    rank_plan = plan(model, 0)  # the same sources and split sizes on every rank
    out: Dict[str, torch.Tensor] = {}
    for name, tensor in _tensors(model, tensor_of).items():
        pieces, dim = rank_plan[name]
        local = tensor.detach()
        if all(pc.dim is None for pc in pieces):  # replicated
            out[pieces[0].source] = local.clone()
            continue
        ranks = [local]
        if tp > 1:
            ranks = [torch.empty_like(local) for _ in range(tp)]
            dist.all_gather(ranks, local.contiguous(), group=model.ctx.tp_group)
        widths = [pc.stop - pc.start for pc in pieces]
        for pc, parts in zip(pieces, zip(*(r.split(widths, dim=dim) for r in ranks))):
            out[pc.source] = torch.cat(parts, dim=dim)
    return out


def save_diffusers(model, directory: str, max_shard_bytes: int = 5 * 1024**3) -> None:
    """Writes config.json and safetensors shards (+ index when more than one; diffusers' file
    names, by huggingface_hub's writer as diffusers' save_pretrained) on rank 0, atomically: a
    temporary folder renamed into place. Collective over the TP group."""
    hub = import_extra("huggingface_hub", "real", f"{model.display_name} export")
    state = export_state_dict(model)
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-export-")
    try:
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump({"_class_name": model.diffusers_class, **model.config.to_diffusers()}, f, indent=2)
        hub.save_torch_state_dict(state, tmp, filename_pattern="diffusion_pytorch_model{suffix}.safetensors",
                                  max_shard_size=max_shard_bytes)
        if os.path.exists(directory):
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
