"""Layer specs: which classes build the tensor-parallel linears of the DiT.

"local": megatron-core's ColumnParallelLinear / RowParallelLinear (any device); with an FP8
recipe ("current", "delayed" or "rowwise"; distributed/fp8.py) their GEMMs run on
torch._scaled_mm (CPU, or CUDA from compute capability 8.9), at one rank and inside
megatron's tensor-parallel forward, without Transformer Engine.
"transformer_engine": megatron-core's Transformer Engine extension classes, with
FP8 through te.fp8_autocast around each forward (recipe "delayed", "current" or
"block", amax reduced over the TP x DP x Ulysses group). It is imported only when
asked for; on a machine without transformer-engine or CUDA it fails with one line.

Every linear returns a plain tensor (megatron's (output, bias) pairs are summed).
A "partial" row-parallel linear returns its un-reduced matmul, so a block can sum
several of them in one collective (TokenRouter.project) and add the biases after.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.model_parallel_config import ModelParallelConfig

from ..checks import InputError, check_choice, require
from . import fp8 as local_fp8

SPECS = ("local", "transformer_engine")
FP8_RECIPES = ("delayed", "current", "block")  # Transformer Engine's (config.FP8_RECIPES mirrors these)
LOCAL_FP8_RECIPES = local_fp8.RECIPES  # torch._scaled_mm: current, delayed, rowwise
_RECIPES = {"local": LOCAL_FP8_RECIPES, "transformer_engine": FP8_RECIPES}


@dataclass(frozen=True)
class LayerSpec:
    name: str = "local"
    fp8: Optional[str] = None  # None, or an FP8 recipe of this spec (see _RECIPES)
    fp8_history: int = local_fp8.DEFAULT_HISTORY  # amax history length of the local "delayed" recipe

    def validate(self) -> None:
        check_choice("layer spec", "name", self.name, SPECS)
        if self.fp8 is not None:
            other = [n for n in SPECS if n != self.name and self.fp8 in _RECIPES[n]]
            hint = f" ({self.fp8!r} is a recipe of layer spec {other[0]!r})" if other else ""
            require(self.fp8 in _RECIPES[self.name],
                    f"layer spec {self.name!r}: fp8 must be one of {', '.join(map(repr, _RECIPES[self.name]))} or "
                    f"None; got {self.fp8!r}{hint}")
        require(isinstance(self.fp8_history, int) and self.fp8_history >= 1,
                f"layer spec: fp8_history must be an integer >= 1 (amax history length); got {self.fp8_history!r}")
        if self.name == "transformer_engine":
            _te_extension()

    @property
    def local_fp8(self) -> Optional[str]:
        """The torch._scaled_mm recipe, or None (no FP8, or Transformer Engine's)."""
        return self.fp8 if self.name == "local" else None


def _te_extension():
    try:
        import transformer_engine  # noqa: F401
        from megatron.core.extensions import transformer_engine as te_ext
    except ImportError as exc:
        raise InputError(
            f"layer spec 'transformer_engine' needs transformer-engine and a CUDA GPU ({exc}); install "
            "'dancegrpo-hpc[gpu]' on a GPU machine, or use layer spec 'local'"
        ) from None
    if not torch.cuda.is_available():
        raise InputError("layer spec 'transformer_engine' needs a CUDA GPU; use layer spec 'local' on CPU")
    return te_ext


_SINGLE_OUTPUT = {}


def single_output(base: type) -> type:
    """Subclass of a megatron linear whose forward returns one tensor, bias added
    (megatron returns (output, bias)); parameter names stay those of the base.
    With a one-rank TP group there is nothing to communicate, and megatron's autograd
    function (built to overlap TP communication) only adds a separate bias pass:
    F.linear runs the same GEMM with the bias fused."""
    if base not in _SINGLE_OUTPUT:
        local = base.__module__.startswith("megatron.core.tensor_parallel")

        def forward(self, x):
            if local and self.tp_group.size() == 1:
                return F.linear(x, self.weight, self.bias)
            out, bias = base.forward(self, x)
            return out if bias is None else out + bias

        def forward_split(self, x, widths):
            """Outputs of consecutive row blocks of the weight (e.g. [qkv | mlp-in]). One rank:
            one GEMM per block, so each output is contiguous (a strided slice of one fused
            output makes the following elementwise ops slower on CPU); otherwise one
            gathered GEMM, split."""
            if local and self.tp_group.size() == 1:
                return [F.linear(x, w, b) for w, b in zip(self.weight.split(widths), self.bias.split(widths))]
            return list(forward(self, x).split(widths, dim=-1))

        _SINGLE_OUTPUT[base] = type(base.__name__, (base,), {"forward": forward, "forward_split": forward_split,
                                                             "__module__": __name__})
    return _SINGLE_OUTPUT[base]


class PartialRowParallelLinear(tensor_parallel.RowParallelLinear):
    """RowParallelLinear whose partial() skips the reduction and the bias: the caller
    reduces several partial sums at once and adds the bias afterwards."""

    def partial(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp_group.size() == 1:
            return F.linear(x, self.weight)
        return self._forward_impl(input=x, weight=self.weight, bias=None,
                                  gradient_accumulation_fusion=self.gradient_accumulation_fusion,
                                  allreduce_dgrad=False, sequence_parallel=False, tp_group=None,
                                  grad_output_buffer=None)


_FP8_CLASSES = {}


def fp8_class(base: type, parallel: str) -> type:
    """Subclass of a local linear class (single_output(...) or PartialRowParallelLinear) whose
    GEMMs run in FP8 (distributed/fp8.py) under its `fp8_state`: at one rank in place of
    F.linear; with a TP group inside megatron's forward, by replacing its _forward_impl (the
    autograd function megatron's forward calls between its own communication). parallel:
    what the TP group splits, "column" (out features) or "row" (in features)."""
    if base not in _FP8_CLASSES:
        from megatron.core.tensor_parallel.mappings import (copy_to_tensor_model_parallel_region,
                                                            gather_from_sequence_parallel_region)

        def _forward_impl(self, input, weight, bias=None, gradient_accumulation_fusion=False, allreduce_dgrad=False,
                          sequence_parallel=False, tp_group=None, **_):
            require(not gradient_accumulation_fusion, "layer spec local fp8: gradient_accumulation_fusion is not "
                                                      "supported; leave it off in the ModelParallelConfig")
            group = self.tp_group
            if sequence_parallel:  # column-parallel under SP: gather the tokens (reduce-scatter of dgrad)
                input = gather_from_sequence_parallel_region(input, tensor_parallel_output_grad=True, group=group)
            elif allreduce_dgrad:  # replicated input: all-reduce its gradient
                input = copy_to_tensor_model_parallel_region(input, group=group)
            return local_fp8.fp8_linear(input, weight, bias, self.fp8_state, group, parallel)

        attrs = {"_forward_impl": _forward_impl, "__module__": __name__}
        if hasattr(base, "forward_split"):
            def forward(self, x):
                if self.tp_group.size() == 1:
                    return local_fp8.fp8_linear(x, self.weight, self.bias, self.fp8_state)
                return base.forward(self, x)

            def forward_split(self, x, widths):
                """One FP8 GEMM (one weight scale for the fused blocks, as at TP > 1), split."""
                return list(forward(self, x).split(widths, dim=-1))

            attrs.update(forward=forward, forward_split=forward_split)
        else:
            def partial(self, x):
                if self.tp_group.size() == 1:
                    return local_fp8.fp8_linear(x, self.weight, None, self.fp8_state)
                return base.partial(self, x)

            attrs["partial"] = partial
        _FP8_CLASSES[base] = type("FP8" + base.__name__, (base,), attrs)
    return _FP8_CLASSES[base]


class LinearFactory:
    """Builds the linears of one model for a spec and a megatron ModelParallelConfig."""

    def __init__(self, spec: LayerSpec, config: ModelParallelConfig, init_method=None):
        self.spec, self.config = spec, config
        self.init = init_method or (lambda w: torch.nn.init.normal_(w, std=0.02))
        self.te = _te_extension() if spec.name == "transformer_engine" else None
        if spec.local_fp8 is not None and not config.use_cpu_initialization and torch.cuda.is_available():
            require(local_fp8.fp8_supported(torch.device("cuda", torch.cuda.current_device())),
                    f"layer spec local fp8={spec.fp8!r}: torch._scaled_mm needs a GPU of compute capability >= 8.9 "
                    f"(Ada, Hopper); this one is {torch.cuda.get_device_capability()}; use fp8=None")

    def _local(self, cls: type, parallel: str, in_features: int, out_features: int, **kwargs) -> nn.Module:
        if self.spec.local_fp8 is None:
            return cls(in_features, out_features, init_method=self.init, bias=True, **kwargs)
        tp = self.config.tensor_model_parallel_size
        k, n = (in_features, out_features // tp) if parallel == "column" else (in_features // tp, out_features)
        require(k % 16 == 0 and n % 16 == 0,
                f"layer spec local fp8={self.spec.fp8!r}: torch._scaled_mm needs in and out features that are "
                f"multiples of 16; a linear here is {in_features} -> {out_features} ({k} -> {n} per TP rank at "
                f"tp={tp}); use a model width that is a multiple of 16, or fp8=None")
        module = fp8_class(cls, parallel)(in_features, out_features, init_method=self.init, bias=True, **kwargs)
        module.fp8_state = local_fp8.FP8State(self.spec.fp8, self.spec.fp8_history)
        return module

    def column(self, in_features: int, out_features: int, gather_output: bool = False, config=None) -> nn.Module:
        cfg = config or self.config
        if self.te is not None and not gather_output:
            return single_output(self.te.TEColumnParallelLinear)(
                in_features, out_features, config=cfg, init_method=self.init, gather_output=False, bias=True,
                skip_bias_add=False, is_expert=False)
        return self._local(single_output(tensor_parallel.ColumnParallelLinear), "column", in_features, out_features,
                           config=cfg, gather_output=gather_output)

    def row(self, in_features: int, out_features: int, config=None) -> nn.Module:
        cfg = config or self.config
        if self.te is not None:
            return single_output(self.te.TERowParallelLinear)(
                in_features, out_features, config=cfg, init_method=self.init, bias=True, input_is_parallel=True,
                skip_bias_add=False, is_expert=False)
        return self._local(single_output(tensor_parallel.RowParallelLinear), "row", in_features, out_features,
                           config=cfg, input_is_parallel=True, skip_bias_add=False)

    def partial_row(self, in_features: int, out_features: int) -> nn.Module:
        """Row-parallel linear for TokenRouter.project: .partial(x) and a replicated .bias."""
        if self.te is not None:
            return _TEPartialRow(self.te, in_features, out_features, self.config, self.init)
        return self._local(PartialRowParallelLinear, "row", in_features, out_features, config=self.config,
                           input_is_parallel=True, skip_bias_add=True)

    def fp8_context(self, amax_group=None):
        """The autocast to run a forward in (FP8 with the TE spec's recipe, or nothing: the
        local spec's FP8 lives in its linears)."""
        if self.spec.fp8 is None or self.te is None:
            return contextlib.nullcontext()
        import transformer_engine.pytorch as te
        from transformer_engine.common import recipe

        recipes = {"delayed": recipe.DelayedScaling, "current": recipe.Float8CurrentScaling,
                   "block": recipe.Float8BlockScaling}
        return te.fp8_autocast(enabled=True, fp8_recipe=recipes[self.spec.fp8](), fp8_group=amax_group)


class _TEPartialRow(nn.Module):
    """A Transformer Engine GEMM over this rank's input shard (no communication), so FP8
    covers the partial products too; the bias stays replicated and is added after the
    reduction (marked sequence_parallel like megatron's row-parallel bias)."""

    def __init__(self, te_ext, in_features, out_features, config, init):
        super().__init__()
        from megatron.core import parallel_state

        tp = parallel_state.get_tensor_model_parallel_world_size()
        self.gemm = te_ext.TELinear(in_features // tp, out_features, parallel_mode="duplicated", config=config,
                                    init_method=init, bias=False, skip_bias_add=True, skip_weight_param_allocation=False,
                                    tp_comm_buffer_name=None, is_expert=False)
        self.weight = self.gemm.weight
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=config.params_dtype))
        setattr(self.bias, "sequence_parallel", config.sequence_parallel)

    def partial(self, x):
        out, _ = self.gemm(x)
        return out
