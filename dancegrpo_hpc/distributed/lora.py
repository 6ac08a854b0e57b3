"""LoRA inside our tensor-parallel linears, for every model family.

`apply_lora(model, rank, alpha, targets)` gives the linears that diffusers / peft name in
`targets` a low-rank adapter: y = W x + (alpha / rank) B A x, A kaiming-uniform and B zeros
(peft's defaults; plain alpha / rank, not rsLoRA). Under tensor parallelism the factors split
as Megatron-Bridge's LoRA (ParallelLinearAdapter) and peft's LoraParallelLinear
(tuners/lora/tp_layer.py) split them, so that no collective is added:

- column-parallel base (output features split): A replicated [r, in], B split like the
  weight's rows [out / tp, r]. The term is computed inside megatron's forward on the input its
  GEMM uses: under Megatron sequence parallelism the tokens megatron all-gathers (we gather
  once, for both products).
- row-parallel base (input features split): A split like the weight's columns [r, in / tp],
  B replicated [out, r]. B A_k x_k is added to rank k's partial product before the existing
  all-reduce / reduce-scatter, which sums it into B (sum_k A_k x_k) = B A x; the same in the
  "partial" linears whose reductions TokenRouter.project fuses. (peft instead all-reduces A x
  in lora_A's own RowParallelLinear: one more, small, collective.)
- replicated nn.Linear (modulation, embedders, output head): both factors replicated.

Names. Targets are diffusers module names or suffixes, as peft's target_modules: a list
matches a module named as an entry or ending in "." + entry; a string is a regex matched in
full. They reach our (fused, renamed) layers through the model's weight plan, the one that
loads and exports its diffusers weights, so adapter and weight names cannot drift apart:
`model.weight_plan(tp_rank) -> {our parameter name: (pieces, dim)}`, each piece a slice of a
diffusers tensor with .source ("<module>.weight"), .dim (None: whole), .start, .stop, .size,
concatenated along dim (models/common/weights.plan). One fused layer may hold several adapters,
each writing its slice of the output (HunyuanVideo's to_qkv: to_q, to_k, to_v; the single
block's qkv_mlp: those and proj_mlp); a packed row-parallel layer (the single block's
proj_out, input [attention | mlp]) holds one whose A shard is its input slices side by side.
A model without weight_plan (or an explicit `plan=`) is read with our names as diffusers'.

Gradients. The replicated factor of a TP-split layer gets a partial gradient on each rank
(A: from this rank's output columns; B: from its share of the input). It carries megatron's
`sequence_parallel` flag, which distributed/grads.allreduce_tp_partial_grads (called by
rl/optim.reduce_gradients) sums over the TP group; a replicated nn.Linear's factors inherit
its weight's flag. The split factor carries megatron's tensor_model_parallel attributes:
`sharded_over_tp(params)` gives the flags global_grad_norm takes.

What a trainer calls:
  names = apply_lora(model, rank, alpha, targets)  # after loading the base, before the first forward
  params = freeze_base(model)  # only the adapters train: the optimizer's parameters
  reduce_gradients(params, model, dp_cp_group)  # rl/optim, unchanged: sums the flagged factors over TP
  norm = global_grad_norm(params, sharded_over_tp(params), tp_group)  # not weights.tp_sharded
  with adapters_enabled(model, False): ...  # the reference policy of the KL term: the base, no copy
  lora_state_dict(model) / load_lora_state_dict(model, sd)  # adapters only, diffusers' keys, any TP
Base-weight code (a diffusers export of the model, weights.tp_sharded) must skip the adapter
parameters: is_lora_parameter_name(name).
"""

from __future__ import annotations

import contextlib
import difflib
import math
import re
import zlib
from collections import namedtuple
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.tensor_parallel.mappings import (copy_to_tensor_model_parallel_region,
                                                    gather_from_sequence_parallel_region)

from ..checks import InputError, require
from .parallelize import parameter_name

Piece = namedtuple("Piece", "source dim start stop size")  # as models/common/weights.Piece

_MARK = ".lora."  # in the name of every adapter parameter: <layer>.lora.<adapter>.lora_A / lora_B


class LoRAAdapter(nn.Module):
    """The adapter of one diffusers linear as this rank holds it: lora_A [r, in here],
    lora_B [out here, r], writing output columns [offset, offset + out here) of its layer.
    split: which factor the TP group splits ("A" columns, "B" rows, None); spans[k]: TP rank
    k's [start, stop) ranges of the full factor along that dim, side by side."""

    def __init__(self, source: str, a: torch.Tensor, b: torch.Tensor, offset: int, full: Tuple[int, int],
                 split: Optional[str], spans: List[List[Tuple[int, int]]]):
        super().__init__()
        self.lora_A, self.lora_B = nn.Parameter(a), nn.Parameter(b)
        self.source, self.offset, self.full, self.split, self.spans = source, offset, full, split, spans


class LoRA(nn.ModuleDict):
    """The adapters of one layer ({key: LoRAAdapter}); forward(x) is their term for this
    rank's output columns of the layer (zeros where no adapter writes)."""

    def __init__(self, adapters: Dict[str, LoRAAdapter], rank: int, alpha: float, dropout: float, out_here: int):
        super().__init__(adapters)
        self.rank, self.scaling, self.dropout, self.out_here = rank, alpha / rank, dropout, out_here
        self.enabled, self.merged = True, False

    @property
    def active(self) -> bool:
        return self.enabled and not self.merged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout:  # one mask for the layer's adapters (peft draws one per adapter), from this
            # rank's generator: at TP > 1 the ranks draw their own masks for a replicated input
            x = F.dropout(x, self.dropout, self.training)
        adapters = list(self.values())
        a = adapters[0].lora_A if len(adapters) == 1 else torch.cat([ad.lora_A for ad in adapters])
        h = F.linear(x, a) * self.scaling  # one GEMM over the (large) input for all adapters
        parts, at = [], 0
        for adapter, h_i in zip(adapters, h.split(self.rank, dim=-1)):
            if adapter.offset > at:
                parts.append(h.new_zeros(*h.shape[:-1], adapter.offset - at))
            parts.append(F.linear(h_i, adapter.lora_B))
            at = adapter.offset + adapter.lora_B.shape[0]
        if at < self.out_here:
            parts.append(h.new_zeros(*h.shape[:-1], self.out_here - at))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


# ------------------------------------------------------------------------------- layer classes
_LORA_CLASSES: Dict[type, type] = {}


def _kind(module: nn.Module) -> Optional[str]:
    if isinstance(module, tensor_parallel.ColumnParallelLinear):
        return "column"
    if isinstance(module, tensor_parallel.RowParallelLinear):
        return "row"
    if isinstance(module, nn.Linear):
        return "replicated"
    return None


def _one_rank(layer) -> bool:
    """Whether the layer runs outside megatron's forward (nn.Linear; our local linears at one
    TP rank take F.linear), so the term is added after its output rather than in _forward_impl."""
    group = getattr(layer, "tp_group", None)
    return group is None or group.size() == 1


def _lora_class(base: type) -> type:
    """Subclass of a linear class whose outputs include its `lora` term. The layer keeps its
    parameter names (our checkpoints and weight plans stay valid): apply_lora swaps the class
    of the instance and adds the `lora` child."""
    if base in _LORA_CLASSES:
        return _LORA_CLASSES[base]
    attrs = {"__module__": __name__}

    def forward(self, x):
        out = base.forward(self, x)
        return out + self.lora(x) if self.lora.active and _one_rank(self) else out

    attrs["forward"] = forward
    if issubclass(base, (tensor_parallel.ColumnParallelLinear, tensor_parallel.RowParallelLinear)):
        column = issubclass(base, tensor_parallel.ColumnParallelLinear)

        def _forward_impl(self, input, weight, bias=None, **kwargs):
            """megatron's GEMM between its own communication (TP > 1)."""
            if not self.lora.active:
                return base._forward_impl(self, input=input, weight=weight, bias=bias, **kwargs)
            if column:  # the input communication megatron's GEMM would do, once for both products
                if kwargs.get("sequence_parallel"):  # all-gather the tokens (backward: reduce-scatter)
                    input = gather_from_sequence_parallel_region(input, tensor_parallel_output_grad=True,
                                                                 group=self.tp_group)
                elif kwargs.get("allreduce_dgrad"):  # replicated input: all-reduce its gradient
                    input = copy_to_tensor_model_parallel_region(input, group=self.tp_group)
                kwargs.update(sequence_parallel=False, allreduce_dgrad=False)
            # row-parallel: input is this rank's shard; the caller reduces the sum
            return base._forward_impl(self, input=input, weight=weight, bias=bias, **kwargs) + self.lora(input)

        attrs["_forward_impl"] = _forward_impl
    if hasattr(base, "forward_split"):
        def forward_split(self, x, widths):
            parts = base.forward_split(self, x, widths)
            if not (self.lora.active and _one_rank(self)):
                return parts
            return [p + d for p, d in zip(parts, self.lora(x).split(widths, dim=-1))]

        attrs["forward_split"] = forward_split
    if hasattr(base, "partial"):
        def partial(self, x):
            out = base.partial(self, x)
            return out + self.lora(x) if self.lora.active and _one_rank(self) else out

        attrs["partial"] = partial
        # TokenRouter.project runs a one-rank partial linear as F.linear on its weight: this
        # tells it to call partial() instead, which adds the term
        attrs["extends_partial"] = property(lambda self: self.lora.active)
    _LORA_CLASSES[base] = type("LoRA" + base.__name__, (base,), attrs)
    return _LORA_CLASSES[base]


# ------------------------------------------------------------------------------- names and plans
def _tp(model: nn.Module) -> Tuple[int, int, Optional[dist.ProcessGroup]]:
    """(size, this rank, group) of the TP group the model's parallel linears use."""
    for module in model.modules():
        if _kind(module) in ("column", "row") and module.tp_group is not None and module.tp_group.size() > 1:
            return module.tp_group.size(), dist.get_rank(module.tp_group), module.tp_group
    return 1, 0, None


def _own_names_plan(model: nn.Module, tp: int) -> Callable[[int], Dict]:
    """A plan for a model whose names are diffusers': each linear is one diffusers module,
    column-parallel ones split by rows, row-parallel ones by columns."""
    def plan(rank):
        out = {}
        for name, module in model.named_modules():
            kind, name = _kind(module), parameter_name(name)
            if kind is None:
                continue
            out_f, in_f = module.weight.shape
            source = f"{name}.weight"
            if kind == "column":
                piece = Piece(source, 0, rank * out_f, (rank + 1) * out_f, out_f * tp)
            elif kind == "row":
                piece = Piece(source, 1, rank * in_f, (rank + 1) * in_f, in_f * tp)
            else:
                piece = Piece(source, None, 0, 0, 0)
            out[source] = ([piece], 0)
        return out
    return plan


def _module_of(source: str) -> str:
    require(source.endswith(".weight"), f"LoRA: weight plan piece {source!r} is not a weight")
    return source[: -len(".weight")]


def _matches(name: str, targets: Union[str, Sequence[str]]) -> bool:
    """peft's check_target_module_exists for a list or a regex string."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def _short(name: str) -> str:
    """A module's name inside its block ("transformer_blocks.3.attn.to_q" -> "attn.to_q")."""
    return re.sub(r"^.*?\.\d+\.", "", name)


def _target_error(target: str, sources: Sequence[str], model: nn.Module) -> InputError:
    candidates = sorted({_short(s) for s in sources})
    close = difflib.get_close_matches(target, candidates, n=6, cutoff=0.4) or candidates[:8]
    return InputError(f"LoRA target {target!r} names no linear layer of {type(model).__name__}; "
                      f"close: {', '.join(close)} (diffusers names or their suffixes)")


# ------------------------------------------------------------------------------- apply
def apply_lora(model: nn.Module, rank: int, alpha: float, targets: Union[str, Sequence[str]], dropout: float = 0.0,
               *, plan: Optional[Callable[[int], Dict]] = None, seed: int = 0) -> List[str]:
    """Adds adapters to the linears of `model` whose diffusers names match `targets`; returns
    those names, sorted (peft's target_modules for a LoraConfig of this adapter set). plan:
    the model's weight plan (default model.weight_plan, else our names as diffusers').
    A is drawn for the whole diffusers layer from a generator seeded by (seed, its name),
    then sliced: every TP rank holds the same replicated factor, and every TP degree the same
    adapter. Call it once per model, on the built (and loaded) model, before its first forward."""
    require(isinstance(rank, int) and rank >= 1, f"LoRA: rank must be an integer >= 1; got {rank!r}")
    require(alpha > 0, f"LoRA: alpha must be > 0; got {alpha!r}")
    require(0.0 <= dropout < 1.0, f"LoRA: dropout must lie in [0, 1); got {dropout!r}")
    require(isinstance(targets, str) or (len(targets) > 0 and all(isinstance(t, str) for t in targets)),
            f"LoRA: targets must be diffusers module names (a list of strings, or a regex string); got {targets!r}")
    tp, tp_rank, _ = _tp(model)
    plan = plan or getattr(model, "weight_plan", None) or _own_names_plan(model, tp)
    plans = [plan(r) for r in range(tp)]
    layers = {parameter_name(n): m for n, m in model.named_modules() if isinstance(m, nn.Module)}
    # diffusers module -> (our layer name, index of its piece in our weight's plan)
    where: Dict[str, Tuple[str, int]] = {}
    for key, (pieces, _) in plans[tp_rank].items():
        layer = key[: -len(".weight")] if key.endswith(".weight") else None
        module = layers.get(layer)
        if module is None or getattr(module, "weight", None) is None or module.weight.dim() != 2:
            continue  # not a linear's weight (norms, convolutions, biases)
        for i, piece in enumerate(pieces):
            where.setdefault(_module_of(piece.source), (layer, i))
    chosen = sorted(s for s in where if _matches(s, targets))
    for target in ([targets] if isinstance(targets, str) else targets):
        if not any(_matches(s, target if isinstance(targets, str) else [target]) for s in where):
            raise _target_error(target, list(where), model)
    by_layer: Dict[str, List[str]] = {}
    for source in chosen:
        by_layer.setdefault(where[source][0], []).append(source)
    for layer_name, sources in by_layer.items():
        _adapt(layer_name, layers[layer_name], sources, plans, tp, tp_rank, rank, alpha, dropout, seed)
    return chosen


def _adapt(name, layer, sources, plans, tp, tp_rank, rank, alpha, dropout, seed) -> None:
    kind = _kind(layer)
    if kind is None or hasattr(layer, "lora"):
        why = "has LoRA adapters already" if kind else (f"is a {type(layer).__name__}; LoRA adapts megatron-core's "
                                                        "(local spec) parallel linears and nn.Linear; use layer spec "
                                                        "'local'")
        raise InputError(f"LoRA: layer {name} (diffusers {', '.join(sources)}) {why}")
    weight = layer.weight
    pieces = [plans[r][f"{name}.weight"][0] for r in range(tp)]  # this layer's pieces, per TP rank
    in_here = weight.shape[1]
    adapters, offset = {}, 0
    for i, piece in enumerate(pieces[tp_rank]):
        width = piece.stop - piece.start if piece.dim is not None else weight.shape[0]
        source = _module_of(piece.source)
        if source in sources:
            if kind == "column":  # B rows: this piece's rows of the diffusers layer
                full = (piece.size if piece.dim is not None else width, in_here)
                spans = [[(p[i].start, p[i].stop)] for p in pieces]
                split = "B" if tp > 1 else None
            elif kind == "row":  # A columns: the input slices of all pieces, side by side
                require(len({p.source for p in pieces[tp_rank]}) == 1,
                        f"LoRA: row-parallel layer {name} sums several diffusers layers; not supported")
                full = (weight.shape[0], piece.size if piece.dim is not None else in_here)
                spans = [[(p.start, p.stop) for p in rank_pieces] for rank_pieces in pieces]
                split, width = ("A" if tp > 1 else None), weight.shape[0]
            else:
                full, spans, split = tuple(weight.shape), [[(0, weight.shape[0])]], None
            adapters[source] = _new_adapter(source, full, split, spans[tp_rank] if split == "A" else None, width,
                                            offset, spans, weight, rank, seed)
        if kind == "row":
            break  # one adapter covers the whole (packed) input
        offset += width
    _mark_gradients(adapters.values(), kind, tp, weight)
    parent = name.rsplit(".", 1)[0] + "." if "." in name else ""
    keys = {(s[len(parent):] if s.startswith(parent) else s).replace(".", "_"): a for s, a in adapters.items()}
    layer.__class__ = _lora_class(type(layer))
    layer.lora = LoRA(keys, rank, alpha, dropout, weight.shape[0])


def _new_adapter(source, full, split, a_spans, width, offset, spans, weight, rank, seed) -> LoRAAdapter:
    out_full, in_full = full
    a = torch.empty(rank, in_full)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(source.encode()))
    nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=gen)  # peft's init of lora_A
    if a_spans is not None:
        a = torch.cat([a[:, s:e] for s, e in a_spans], dim=1)
    a = a.to(device=weight.device, dtype=weight.dtype)
    b = torch.zeros(width, rank, device=weight.device, dtype=weight.dtype)
    return LoRAAdapter(source, a, b, offset, full, split, spans)


def _mark_gradients(adapters, kind: str, tp: int, weight: torch.Tensor) -> None:
    """Flags for the gradient reduction and the norm (see the module docstring)."""
    for adapter in adapters:
        if kind == "replicated":
            if getattr(weight, "sequence_parallel", False):
                for p in (adapter.lora_A, adapter.lora_B):
                    setattr(p, "sequence_parallel", True)
            continue
        split, replicated, dim = ((adapter.lora_B, adapter.lora_A, 0) if kind == "column"
                                  else (adapter.lora_A, adapter.lora_B, 1))
        set_tensor_model_parallel_attributes(split, tp > 1, dim, 1)
        if tp > 1:
            setattr(replicated, "sequence_parallel", True)


# ------------------------------------------------------------------------------- using adapters
def _layers(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if isinstance(getattr(module, "lora", None), LoRA):
            yield parameter_name(name), module


def lora_adapters(model: nn.Module) -> Dict[str, LoRAAdapter]:
    """diffusers module name -> its adapter (this rank's factors)."""
    return {a.source: a for _, layer in _layers(model) for a in layer.lora.values()}


def lora_parameters(model: nn.Module) -> List[nn.Parameter]:
    return [p for a in lora_adapters(model).values() for p in (a.lora_A, a.lora_B)]


def is_lora_parameter_name(name: str) -> bool:
    """Whether a name from model.named_parameters() / state_dict() is an adapter's (base-weight
    code such as a diffusers export skips these)."""
    return _MARK in name and name.rsplit(".", 1)[-1] in ("lora_A", "lora_B")


def freeze_base(model: nn.Module) -> List[nn.Parameter]:
    """Only the adapters require gradients afterwards; returns them."""
    params = lora_parameters(model)
    require(params, f"LoRA: {type(model).__name__} has no adapters; call apply_lora first")
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return params


def sharded_over_tp(params: Sequence[nn.Parameter]) -> List[bool]:
    """For global_grad_norm: is each parameter split over the TP group (megatron's flag)?"""
    return [bool(getattr(p, "tensor_model_parallel", False)) for p in params]


@contextlib.contextmanager
def adapters_enabled(model: nn.Module, enabled: bool = True):
    """Runs the model with its adapters on or off (off: exactly the base model, e.g. the
    reference policy of a KL term, without a second copy of the weights)."""
    layers = [layer for _, layer in _layers(model)]
    require(not any(layer.lora.merged for layer in layers),
            "LoRA: adapters_enabled on merged adapters; unmerge_lora(model) first")
    before = [layer.lora.enabled for layer in layers]
    for layer in layers:
        layer.lora.enabled = enabled
    try:
        yield model
    finally:
        for layer, state in zip(layers, before):
            layer.lora.enabled = state


@torch.no_grad()
def _merge(model: nn.Module, sign: int, merged: bool) -> None:
    for _, layer in _layers(model):
        if layer.lora.merged == merged:
            continue
        for a in layer.lora.values():  # this rank's rows / columns of the weight: no communication
            delta = (a.lora_B.float() @ a.lora_A.float()) * (sign * layer.lora.scaling)
            layer.weight[a.offset:a.offset + a.lora_B.shape[0]] += delta.to(layer.weight.dtype)
        layer.lora.merged = merged


def merge_lora(model: nn.Module) -> None:
    """Adds s B A into the base weights (e.g. for rollouts: one GEMM per layer). In a
    low-precision model unmerging does not restore the weights bit for bit."""
    _merge(model, +1, True)


def unmerge_lora(model: nn.Module) -> None:
    _merge(model, -1, False)


# ------------------------------------------------------------------------------- state dicts
_KEY = re.compile(r"^(.*)\.lora_([AB])(?:\.[^.]+)?\.weight$")


def _gather(t: torch.Tensor, group) -> List[torch.Tensor]:
    parts = [torch.empty_like(t) for _ in range(group.size())]
    dist.all_gather(parts, t.contiguous(), group=group)
    return parts


def _full(layer, adapter: LoRAAdapter, factor: str, local: torch.Tensor) -> torch.Tensor:
    """The whole factor of the diffusers layer from the TP ranks' pieces (collective)."""
    if adapter.split != factor:
        return local.detach().clone()
    dim = 1 if factor == "A" else 0
    shape = list(local.shape)
    shape[dim] = adapter.full[dim]
    full = local.new_empty(shape)
    for part, spans in zip(_gather(local.detach(), layer.tp_group), adapter.spans):
        for (s, e), chunk in zip(spans, part.split([e - s for s, e in spans], dim=dim)):
            full.narrow(dim, s, e - s).copy_(chunk)
    return full


def lora_state_dict(model: nn.Module, prefix: str = "transformer",
                    tensor_of: Callable[[torch.Tensor], torch.Tensor] = lambda p: p) -> Dict[str, torch.Tensor]:
    """The adapters under peft's names as diffusers' load_lora_weights reads them:
    "<prefix>.<diffusers module>.lora_A.weight" [r, in] and ".lora_B.weight" [out, r], whole
    tensors on every rank (collective over the TP group: every TP rank calls it). lora_B holds
    the scaling (alpha / r) folded in: diffusers loads a peft dict without alphas as alpha = r
    (scale 1), so the dict gives the same output wherever it is loaded. tensor_of picks what
    to export of each factor (p.grad for gradient checks)."""
    out = {}
    pre = f"{prefix}." if prefix else ""
    for _, layer in _layers(model):
        for a in layer.lora.values():
            out[f"{pre}{a.source}.lora_A.weight"] = _full(layer, a, "A", tensor_of(a.lora_A))
            out[f"{pre}{a.source}.lora_B.weight"] = _full(layer, a, "B", tensor_of(a.lora_B)) * layer.lora.scaling
    return out


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, state_dict: Dict[str, torch.Tensor], prefix: str = "transformer") -> None:
    """Loads a dict in lora_state_dict's form (or peft's, with adapter names in the keys) into
    the adapters apply_lora made; each TP rank copies its slices. lora_B is read as holding
    the scaling, as lora_state_dict writes it. No communication."""
    pre = f"{prefix}." if prefix else ""
    factors: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        m = _KEY.match(key[len(pre):] if key.startswith(pre) else key)
        require(m is not None, f"LoRA state dict: key {key!r} is not a lora_A / lora_B weight")
        factors.setdefault(m.group(1), {})[m.group(2)] = value
    adapters = {a.source: (layer, a) for _, layer in _layers(model) for a in layer.lora.values()}
    unknown = sorted(set(factors) - set(adapters))
    require(not unknown, f"LoRA state dict: {len(unknown)} modules have no adapter here, e.g. "
                         f"{', '.join(unknown[:3])}; apply_lora with targets naming them first")
    missing = sorted(s for s in adapters if set(factors.get(s, {})) != {"A", "B"})
    require(not missing, f"LoRA state dict: lacks lora_A / lora_B of {len(missing)} adapted modules, e.g. "
                         f"{', '.join(missing[:3])}")
    for source, (layer, a) in adapters.items():
        full_a, full_b = factors[source]["A"], factors[source]["B"]
        want_a, want_b = (a.lora_A.shape[0], a.full[1]), (a.full[0], a.lora_B.shape[1])
        require(tuple(full_a.shape) == want_a and tuple(full_b.shape) == want_b,
                f"LoRA state dict: {source} has lora_A {tuple(full_a.shape)} and lora_B {tuple(full_b.shape)}; "
                f"this adapter needs {want_a} and {want_b} (rank {layer.lora.rank})")
        a.lora_A.copy_(_local(layer, a, "A", full_a))
        a.lora_B.copy_(_local(layer, a, "B", full_b) / layer.lora.scaling)


def _local(layer, adapter: LoRAAdapter, factor: str, full: torch.Tensor) -> torch.Tensor:
    """This TP rank's slices of a whole factor."""
    if adapter.split != factor:
        return full
    dim = 1 if factor == "A" else 0
    spans = adapter.spans[dist.get_rank(layer.tp_group)]
    return torch.cat([full.narrow(dim, s, e - s) for s, e in spans], dim=dim)
