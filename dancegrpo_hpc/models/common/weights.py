"""Weights in diffusers' layout for the joint-attention DiTs (HunyuanVideo, FLUX): load
into a TP-sharded model (each rank reads only its slices), export back, save as a
diffusers checkpoint directory.

One plan says, for each of our parameters on TP rank r, which slices of which
diffusers tensors it is made of (fused q/k/v, the packed single-block output
projection, row/column splits). Loading reads those slices; exporting gathers each
parameter over the TP group and puts the slices back.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from ...checks import InputError, require
from ...distributed.parallelize import parameter_name

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
INDEX_FILE = "diffusion_pytorch_model.safetensors.index.json"


@dataclass(frozen=True)
class Piece:
    """Rows/columns [start, stop) along dim of a diffusers tensor (dim None: all of it);
    size: the full length the source must have along dim."""

    source: str
    dim: Optional[int] = None
    start: int = 0
    stop: int = 0
    size: int = 0


def _split(source: str, dim: int, size: int, tp: int, rank: int) -> Piece:
    step = size // tp
    return Piece(source, dim, rank * step, (rank + 1) * step, size)


def plan(model, rank: int) -> Dict[str, Tuple[List[Piece], int]]:
    """our parameter name -> (pieces, dim along which they are concatenated). The blocks
under model.sharded_blocks hold the TP-split linears (diffusers' names: to_q/k/v,
add_q/k/v_proj, to_out.0, to_add_out, ff(_context).net.0.proj / net.2, proj_mlp,
proj_out, norm1(_context).linear / norm.linear); everything else is replicated."""
    cfg = model.config
    tp, d = model.ctx.layout.tp, cfg.hidden_size
    column_adaln = model.adaln == "column"
    out: Dict[str, Tuple[List[Piece], int]] = {}

    def col(name, sources_sizes):  # column-parallel weight and bias: rows of each source
        for kind in ("weight", "bias"):
            out[f"{name}.{kind}"] = ([_split(f"{s}.{kind}", 0, n, tp, rank) for s, n in sources_sizes], 0)

    def row(name, source, size):  # row-parallel: weight columns split, bias whole
        out[f"{name}.weight"] = ([_split(f"{source}.weight", 1, size, tp, rank)], 1)
        out[f"{name}.bias"] = ([Piece(f"{source}.bias")], 0)

    def qkv(prefix, names):
        return [(f"{prefix}.{n}", d) for n in names]

    for key, _ in model.named_parameters():
        name = parameter_name(key)
        if name in out:
            continue
        m = re.match(r"(.*)\.(attn\.to_qkv|attn\.add_qkv|attn\.to_out|attn\.to_add_out|ff(?:_context)?\.fc1|ff(?:_context)?\.fc2"
                     r"|qkv_mlp|proj_out|norm1(?:_context)?\.linear|norm\.linear)\.(weight|bias)$", name)
        if not m or not m.group(1).startswith(tuple(model.sharded_blocks)):
            out[name] = ([Piece(name)], 0)  # replicated, same name in diffusers
            continue
        block, layer = m.group(1), m.group(2)
        target, mlp = f"{block}.{layer}", model.mlp_width(block)
        if layer == "attn.to_qkv":
            col(target, qkv(f"{block}.attn", ("to_q", "to_k", "to_v")))
        elif layer == "attn.add_qkv":
            col(target, qkv(f"{block}.attn", ("add_q_proj", "add_k_proj", "add_v_proj")))
        elif layer == "attn.to_out":
            row(target, f"{block}.attn.to_out.0", d)
        elif layer == "attn.to_add_out":
            row(target, f"{block}.attn.to_add_out", d)
        elif layer.endswith("fc1"):
            col(target, [(f"{block}.{layer[:-4]}.net.0.proj", mlp)])
        elif layer.endswith("fc2"):
            row(target, f"{block}.{layer[:-4]}.net.2", mlp)
        elif layer == "qkv_mlp":
            col(target, qkv(f"{block}.attn", ("to_q", "to_k", "to_v")) + [(f"{block}.proj_mlp", mlp)])
        elif layer == "proj_out":  # packed [attention | mlp] input columns
            attn, hidden = _split(f"{target}.weight", 1, d, tp, rank), _split(f"{target}.weight", 1, mlp, tp, rank)
            attn = Piece(attn.source, 1, attn.start, attn.stop, d + mlp)
            out[f"{target}.weight"] = ([attn, Piece(hidden.source, 1, d + hidden.start, d + hidden.stop, d + mlp)], 1)
            out[f"{target}.bias"] = ([Piece(f"{target}.bias")], 0)
        elif column_adaln:  # AdaLN linear, column-parallel
            width = (6 if "norm1" in layer else 3) * d
            col(target, [(target, width)])
        else:
            out[f"{target}.weight"] = ([Piece(f"{target}.weight")], 0)
            out[f"{target}.bias"] = ([Piece(f"{target}.bias")], 0)
    return out


# ---------------------------------------------------------------------------------- readers
class StateDictReader:
    def __init__(self, state_dict: Dict[str, torch.Tensor]):
        self.sd = state_dict

    def names(self):
        return set(self.sd)

    def shape(self, name: str):
        return tuple(self.sd[name].shape)

    def read(self, piece: Piece) -> torch.Tensor:
        t = self.sd[piece.source]
        return t if piece.dim is None else t.narrow(piece.dim, piece.start, piece.stop - piece.start)


class SafetensorsReader:
    """Reads only the requested slices of a (sharded) safetensors checkpoint."""

    def __init__(self, directory: str, label: str = "diffusers"):
        from safetensors import safe_open

        self.directory = directory
        index_path, single = os.path.join(directory, INDEX_FILE), os.path.join(directory, WEIGHTS_FILE)
        if os.path.exists(index_path):
            weight_map = json.load(open(index_path))["weight_map"]
        elif os.path.exists(single):
            with safe_open(single, framework="pt") as f:
                weight_map = {k: WEIGHTS_FILE for k in f.keys()}
        else:
            raise InputError(f"{label} checkpoint {directory!r}: no {WEIGHTS_FILE} or {INDEX_FILE}; point at the "
                             "transformer folder of a diffusers checkpoint")
        missing = sorted({f for f in weight_map.values() if not os.path.exists(os.path.join(directory, f))})
        if missing:
            raise InputError(f"{label} checkpoint {directory!r}: shard files listed in the index are missing: "
                             f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; the download is incomplete")
        self.weight_map = weight_map
        self._open = safe_open
        self._files = {}
        self.bytes_read = 0  # what this rank actually read (it reads only its slices)

    def names(self):
        return set(self.weight_map)

    def _slice(self, name: str):
        file = self.weight_map[name]
        if file not in self._files:
            self._files[file] = self._open(os.path.join(self.directory, file), framework="pt")
        return self._files[file].get_slice(name)

    def shape(self, name: str):
        return tuple(self._slice(name).get_shape())

    def read(self, piece: Piece) -> torch.Tensor:
        sl = self._slice(piece.source)
        if piece.dim is None:
            out = sl[:]
        else:
            index = [slice(None)] * len(sl.get_shape())
            index[piece.dim] = slice(piece.start, piece.stop)
            out = sl[tuple(index)]
        self.bytes_read += out.numel() * out.element_size()
        return out


def read_config(cls, directory: str):
    """The config of model class cls (a JointDiT) in a diffusers checkpoint folder."""
    path = os.path.join(directory, CONFIG_FILE)
    require(os.path.isfile(path), f"{cls.display_name} checkpoint {directory!r}: {CONFIG_FILE} not found; point at "
                                  "the transformer folder of a diffusers checkpoint")
    cfg = json.load(open(path))
    if cfg.get("_class_name", cls.diffusers_class) != cls.diffusers_class:
        raise InputError(f"{cls.display_name} checkpoint {directory!r}: config is a {cfg['_class_name']}, not a "
                         f"{cls.diffusers_class}")
    return cls.config_class.from_diffusers(cfg, variant=os.path.basename(os.path.normpath(directory)))


# ---------------------------------------------------------------------------------- load
def load_weights(model, reader) -> None:
    rank = model.ctx.tp_rank
    available = reader.names()
    wanted = plan(model, rank)
    missing = sorted({pc.source for pieces, _ in wanted.values() for pc in pieces} - available)
    if missing:
        raise InputError(f"{model.display_name} weights: the checkpoint lacks {len(missing)} tensors the model needs, "
                         f"e.g. {', '.join(missing[:4])}; is it a {model.diffusers_class} with this config "
                         f"({model.config.variant})?")
    used = {pc.source for pieces, _ in wanted.values() for pc in pieces}  # the same sources on every rank
    unexpected = sorted(available - used)
    if unexpected:
        raise InputError(f"{model.display_name} weights: the checkpoint has {len(unexpected)} tensors this config "
                         f"does not use, e.g. {', '.join(unexpected[:4])}; check the config matches the checkpoint")
    for pieces, _ in wanted.values():
        for pc in pieces:
            if pc.dim is not None and reader.shape(pc.source)[pc.dim] != pc.size:
                raise InputError(f"{model.display_name} weights: checkpoint tensor {pc.source} has shape "
                                 f"{reader.shape(pc.source)} but this config needs {pc.size} along dim {pc.dim}; "
                                 "check the config matches the checkpoint")
    params = {parameter_name(n): p for n, p in model.named_parameters()}
    with torch.no_grad():
        for name, (pieces, dim) in wanted.items():
            value = torch.cat([reader.read(pc) for pc in pieces], dim=dim) if len(pieces) > 1 else reader.read(pieces[0])
            target = params[name]
            if tuple(value.shape) != tuple(target.shape):
                raise InputError(f"{model.display_name} weights: {name} needs shape {tuple(target.shape)} on this rank "
                                 f"but the checkpoint gives {tuple(value.shape)}; check the config matches the "
                                 "checkpoint")
            target.copy_(value.to(target.dtype))


def load_diffusers(cls, model_or_path, **options):
    """Model class cls (a JointDiT) from a diffusers model instance or checkpoint directory."""
    if isinstance(model_or_path, (str, os.PathLike)):
        directory = str(model_or_path)
        require(os.path.isdir(directory), f"{cls.display_name} checkpoint {directory!r} is not a directory")
        config = read_config(cls, directory)
        reader = SafetensorsReader(directory, cls.display_name)
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
def _gather_tp(model, param: torch.Tensor, sharded: bool) -> List[torch.Tensor]:
    """This parameter as held by each TP rank."""
    tp = model.ctx.layout.tp
    if tp == 1 or not sharded:
        return [param.detach()] * tp
    parts = [torch.empty_like(param) for _ in range(tp)]
    dist.all_gather(parts, param.detach().contiguous(), group=model.ctx.tp_group)
    return parts


def tp_sharded(model) -> List[bool]:
    """For each of model.parameters(): is it split over the TP group (so norms and
    other reductions must sum it over TP) rather than replicated? Read from the
    weight plan, which is the source of truth for the layout."""
    rank_plan = plan(model, model.ctx.tp_rank)
    return [any(pc.dim is not None for pc in rank_plan[parameter_name(key)][0]) and model.ctx.layout.tp > 1
            for key, _ in model.named_parameters()]


def export_state_dict(model, tensor_of=lambda p: p) -> Dict[str, torch.Tensor]:
    """diffusers-named full tensors (every rank gets them; collective over the TP group).
    tensor_of picks what to export of each parameter: the weights, or e.g. p.grad."""
    tp = model.ctx.layout.tp
    plans = [plan(model, r) for r in range(tp)]
    pieces: Dict[str, List[Tuple[Piece, torch.Tensor]]] = {}
    for key, param in model.named_parameters():
        name = parameter_name(key)
        sharded = any(pc.dim is not None for pc in plans[0][name][0])
        for rank, local in enumerate(_gather_tp(model, tensor_of(param), sharded)):
            rank_pieces, dim = plans[rank][name]
            sizes = [pc.stop - pc.start if pc.dim is not None else local.shape[dim] for pc in rank_pieces]
            for pc, chunk in zip(rank_pieces, local.split(sizes, dim=dim)):
                pieces.setdefault(pc.source, []).append((pc, chunk))
    out = {}
    for source, parts in pieces.items():
        first = parts[0][0]
        if first.dim is None:
            out[source] = parts[0][1].clone()
            continue
        unique = {pc.start: t for pc, t in parts}
        out[source] = torch.cat([unique[s] for s in sorted(unique)], dim=first.dim)
    return out


def save_diffusers(model, directory: str, max_shard_bytes: int = 5 * 1024**3) -> None:
    """Writes config.json and safetensors shards (+ index) on rank 0, atomically
    (a temporary folder renamed into place). Collective over the TP group."""
    from safetensors.torch import save_file

    state = export_state_dict(model)
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-export-")
    try:
        shards, current, size = [], {}, 0
        for name in sorted(state):
            t = state[name].contiguous()
            if current and size + t.numel() * t.element_size() > max_shard_bytes:
                shards.append(current)
                current, size = {}, 0
            current[name] = t
            size += t.numel() * t.element_size()
        shards.append(current)
        config = {"_class_name": model.diffusers_class, **model.config.to_diffusers()}
        json.dump(config, open(os.path.join(tmp, CONFIG_FILE), "w"), indent=2)
        if len(shards) == 1:
            save_file(shards[0], os.path.join(tmp, WEIGHTS_FILE), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards):
                fname = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, os.path.join(tmp, fname), metadata={"format": "pt"})
                weight_map.update({k: fname for k in shard})
            total = sum(t.numel() * t.element_size() for t in state.values())
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, open(os.path.join(tmp, INDEX_FILE), "w"))
        if os.path.exists(directory):
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)

