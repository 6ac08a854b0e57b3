"""FP8 linears on torch._scaled_mm, without Transformer Engine (the "local" layer spec's
FP8 recipes; distributed/spec.py builds the linears).

Recipes (the master weights stay in their dtype, bf16 or float32, and are quantized on the
fly in every forward; outputs come back in the input's dtype):

    current   per-tensor scales from this call's amax; e4m3 activations and weights,
              e5m2 gradients (Transformer Engine's Float8CurrentScaling, HYBRID format)
    delayed   per-tensor scales from the max of an amax history (length `history`, default
              16) of earlier calls, as TE's DelayedScaling with amax_compute_algo="max";
              values beyond the range saturate. The history is a float32 buffer of the
              linear (checkpoints carry it). A row with no history yet (first call, or
              after a build) uses this call's amax.
    rowwise   one scale per row of each GEMM operand along its contraction axis (torchao's
              float8 "rowwise" recipe): forward x per token and W per output feature;
              dgrad g per token and W per input feature; wgrad g^T and x per feature over
              the tokens. e4m3 everywhere, as torchao does (the finer scales need less range,
              and the CUTLASS rowwise kernel takes e4m3).

Every scale is a power of two (torchao's round_scales_to_power_of_2): the largest 2^k with
amax * 2^k <= the format's max. Multiplying by it is exact in bf16 and float32, so a tensor
is quantized in one multiply written straight into the fp8 output, in its own dtype, with
no float32 copy (with a non-power-of-two scale the bf16 product rounds before the fp8 cast:
3.6% of the elements of a bf16 Gaussian differ from the float32 route); and the
dequantization scale handed to _scaled_mm (its scale_a / scale_b multiply the product) is
the exact reciprocal. It costs at most one binade of headroom.

_scaled_mm takes a row-major first and a column-major second operand whose dims (K and N)
are multiples of 16: layers must have in / out features (per TP rank) that are multiples of
16; the weight gradient contracts over the tokens, which are zero-padded to a multiple of 16.

The forward saves the fp8 activations (1 byte per element, not the input's 2 or 4) and their
scales, already in the wgrad's layout ([K, tokens], quantized from x transposed: the same
values as the forward's operand for the per-tensor recipes). The weight is not copied: the
parameter itself is saved (it lives anyway) and re-quantized in the backward, transposed,
with the forward's scale (the same fp8 values; rowwise needs other scales there anyway).
Transposed operands are always quantized from the high-precision tensor, never shuffled in
fp8 (inductor's CPU backend cannot compile fp8 copies; it is one pass either way).

Tensor parallelism: with a TP group every rank quantizes with the scales a single rank would
use. Per-tensor amaxes are maxed over the group (a 2-float all-reduce in the forward, 1 float
in the backward). Row-wise amaxes only where the row spans a sharded dimension: x and W rows
of a row-parallel linear (K is split), g rows and W columns in a column-parallel linear's
dgrad (N is split); token-axis amaxes never (tokens are gathered before the GEMM under
sequence parallelism). Amaxes are not reduced over data-parallel or Ulysses ranks: each
rank's GEMMs dequantize exactly with their own scales.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
FP8_MAX = {E4M3: 448.0, E5M2: 57344.0}
RECIPES = ("current", "delayed", "rowwise")
DEFAULT_HISTORY = 16
X, W, G = 0, 1, 2  # rows of the amax history
_TINY_AMAX = 1e-30  # an all-zero tensor gets a finite scale (2^108)


def pad16(n: int) -> int:
    return -(-n // 16) * 16


def amax(t: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    """max |t| (over dim, kept) in float32: one reduction, no |t| temporary."""
    if dim is None:
        return torch.linalg.vector_norm(t, float("inf")).float()
    return torch.linalg.vector_norm(t, float("inf"), dim=dim, keepdim=True).float()


def pow2_scale(amax_: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The largest power of two s with amax * s <= the format's max (float32)."""
    top = FP8_MAX[dtype]
    a = amax_.float().clamp_min(_TINY_AMAX)
    s = torch.exp2(torch.floor(torch.log2(top / a)))
    return torch.where(a * s > top, s * 0.5, s)  # log2 of a rounded quotient may land one binade high


_MUL_WRITES_FP8: Dict[str, bool] = {}


def _mul_writes_fp8(device_type: str) -> bool:
    """Whether torch.mul(..., out=fp8) works here (one pass: multiply and cast)."""
    if device_type not in _MUL_WRITES_FP8:
        try:
            probe = torch.ones(2, device=device_type)
            torch.mul(probe, probe, out=torch.empty(2, dtype=E4M3, device=device_type))
            _MUL_WRITES_FP8[device_type] = True
        except RuntimeError:
            _MUL_WRITES_FP8[device_type] = False
    return _MUL_WRITES_FP8[device_type]


def quantize(t: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, saturate: bool = False,
             width: Optional[int] = None) -> torch.Tensor:
    """t * scale cast to `dtype`, as a contiguous [rows, width] tensor (columns past t's are
    zero). t is 2-D, any strides (a transposed view gives the transposed layout in the same
    pass); scale broadcasts (a scalar, [rows, 1] or [1, cols]) and is a power of two, so the
    product is exact in t's dtype. saturate clamps to the format's range first (delayed
    scaling: the scale comes from earlier amaxes); else the scale already bounds t."""
    scale = scale.to(t.dtype)
    if saturate:
        limit = FP8_MAX[dtype] / scale  # exact: a power of two times 448 or 57344
        t = torch.clamp(t, -limit, limit)
    rows, cols = t.shape
    width = cols if width is None else width
    if torch.compiler.is_compiling() or not _mul_writes_fp8(t.device.type):
        # the functional form: inductor fuses scale, clamp, pad and cast into one kernel
        return F.pad(t * scale, (0, width - cols)).to(dtype).contiguous()
    out = torch.empty(rows, width, dtype=dtype, device=t.device)
    if width > cols:
        out.view(torch.uint8)[:, cols:].zero_()  # the zero byte is +0 in both formats
    torch.mul(t, scale, out=out[:, :cols])
    return out


def _cpu_takes_row_scales() -> bool:
    """Whether CPU (oneDNN) _scaled_mm takes row / column scales: torch 2.13 does, 2.11 takes
    per-tensor scales only ("Now _scaled_mm only supports per-tensor scaling for CPU backend")."""
    a = torch.ones(16, 16).to(E4M3)
    try:
        torch._scaled_mm(a, a.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.bfloat16)
        return True
    except RuntimeError:
        return False


# probed once at import: scaled_mm runs inside torch.compile'd blocks, which should not trace a probe
CPU_ROW_SCALES = _cpu_takes_row_scales()


def scaled_mm(a, b, inv_a, inv_b, bias, out_dtype):
    """a @ b * inv_a * inv_b (+ bias): bias fused where _scaled_mm allows it (a bf16 / fp16
    output and bias of that dtype), added after otherwise."""
    if a.device.type == "cpu" and not CPU_ROW_SCALES and (inv_a.numel() > 1 or inv_b.numel() > 1):
        # the same float32 sums of the same fp8 products, scaled afterwards. Exact: every scale
        # is a power of two, and a row / column scale factors out of its dot products.
        one = torch.ones((), device=a.device)
        out = torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.float32) * inv_a * inv_b
        return (out if bias is None else out + bias.float()).to(out_dtype)
    fuse = bias is not None and out_dtype in (torch.bfloat16, torch.float16) and bias.dtype == out_dtype
    out = torch._scaled_mm(a, b, scale_a=inv_a, scale_b=inv_b, bias=bias if fuse else None, out_dtype=out_dtype)
    if bias is not None and not fuse:
        out = out + bias.to(out_dtype)
    return out


class FP8State(nn.Module):
    """A linear's FP8 recipe and, for delayed scaling, its amax history: a float32 buffer
    [3, history] (rows x, weight, grad; newest first) that checkpoints carry."""

    def __init__(self, recipe: str, history: int = DEFAULT_HISTORY):
        super().__init__()
        if recipe not in RECIPES:
            raise ValueError(f"FP8State: recipe must be one of {RECIPES}; got {recipe!r}")
        self.recipe, self.history_len = recipe, history
        self.delayed, self.rowwise = recipe == "delayed", recipe == "rowwise"
        # host flags: row i of the history holds at least one amax (then the scale no longer
        # waits for this call's amax, so a fused kernel can cast and reduce in one pass)
        self.ready = [False, False, False]
        if self.delayed:
            self.register_buffer("amax_history", torch.zeros(3, history, dtype=torch.float32))

    def extra_repr(self) -> str:
        return f"recipe={self.recipe}" + (f", history={self.history_len}" if self.delayed else "")

    def _apply(self, fn, recurse=True):
        """model.to(torch.bfloat16) must not round the history: keep it float32 (device moves apply)."""
        history = self._buffers.get("amax_history")
        out = super()._apply(fn, recurse)
        if history is not None and self._buffers["amax_history"].dtype != torch.float32:
            self._buffers["amax_history"] = history.to(self._buffers["amax_history"].device)
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.delayed:
            self.ready = [bool(v) for v in (self.amax_history.amax(dim=1) > 0).tolist()]

    def scale_amax(self, row: int, current: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The amax the scale is computed from: the history's max; this call's amax while the
        row is empty; once filled, an all-zero history means scale 1 (TE's initial scale)."""
        past = self.amax_history[row].max()
        fallback = torch.full_like(past, FP8_MAX[dtype]) if self.ready[row] else current
        return torch.where(past > 0, past, fallback)

    @torch.no_grad()
    def record(self, row: int, current: torch.Tensor) -> None:
        h = self.amax_history[row]
        h.copy_(torch.roll(h, 1))
        h[0] = current
        self.ready[row] = True


def _reduce_max(t: torch.Tensor, group) -> torch.Tensor:
    if group is not None and group.size() > 1:
        t = t.contiguous()
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return t


class _Plan:
    """What one GEMM call needs besides tensors: the state, the TP group and which operand
    dimension that group splits ("column": out features, "row": in features, None)."""

    def __init__(self, state: FP8State, group, parallel: Optional[str], train: bool):
        self.state, self.parallel, self.train = state, parallel, train
        self.group = group if group is not None and group.size() > 1 else None

    def reduce_rows(self, t, sharded_as):
        return _reduce_max(t, self.group) if self.parallel == sharded_as else t


class _FP8Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, plan: _Plan):
        state = plan.state
        m = x.shape[0]
        if state.rowwise:
            sx = pow2_scale(plan.reduce_rows(amax(x, 1), "row"), E4M3)  # [M, 1]
            sw = pow2_scale(plan.reduce_rows(amax(weight, 1), "row"), E4M3)  # [N, 1]
            out = scaled_mm(quantize(x, sx, E4M3), quantize(weight, sw, E4M3).t(), sx.reciprocal(),
                            sw.reciprocal().reshape(1, -1), bias, x.dtype)
            saved = ()
            if plan.train and ctx.needs_input_grad[1]:  # wgrad's x: per in feature over the tokens, [K, M16]
                sxc = pow2_scale(amax(x, 0), E4M3)  # [1, K]
                saved = (quantize(x.t(), sxc.reshape(-1, 1), E4M3, width=pad16(m)), sxc)
        else:
            ax, aw = amax(x), amax(weight)
            if plan.group is not None:
                ax, aw = _reduce_max(torch.stack([ax, aw]), plan.group).unbind()
            ux, uw = (state.scale_amax(X, ax, E4M3), state.scale_amax(W, aw, E4M3)) if state.delayed else (ax, aw)
            sx, sw = pow2_scale(ux, E4M3), pow2_scale(uw, E4M3)
            out = scaled_mm(quantize(x, sx, E4M3, saturate=state.delayed),
                            quantize(weight, sw, E4M3, saturate=state.delayed).t(), sx.reciprocal(), sw.reciprocal(),
                            bias, x.dtype)
            if state.delayed:
                state.record(X, ax)
                state.record(W, aw)
            saved = (sw,)
            if plan.train and ctx.needs_input_grad[1]:  # wgrad's x, laid out [K, M16] (same values as above)
                saved = (quantize(x.t(), sx, E4M3, saturate=state.delayed, width=pad16(m)), sx, sw)
        ctx.save_for_backward(weight, *saved)
        ctx.plan, ctx.m, ctx.x_dtype = plan, m, x.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx, g):
        plan, m = ctx.plan, ctx.m
        state = plan.state
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        weight, *saved = ctx.saved_tensors
        g = g.contiguous()
        dx = dw = db = None
        if state.rowwise:
            if need_x:  # dgrad: g per token, W per input feature (both over the out features)
                sg = pow2_scale(plan.reduce_rows(amax(g, 1), "column"), E4M3)  # [M, 1]
                swc = pow2_scale(plan.reduce_rows(amax(weight, 0), "column"), E4M3)  # [1, K]
                wqt = quantize(weight.t(), swc.reshape(-1, 1), E4M3)  # [K, N]
                dx = scaled_mm(quantize(g, sg, E4M3), wqt.t(), sg.reciprocal(), swc.reciprocal(), None, ctx.x_dtype)
            if need_w:  # wgrad: g^T per out feature, x per in feature (both over the tokens)
                xqt, sxc = saved
                sgc = pow2_scale(amax(g, 0), E4M3)  # [1, N]
                gqt = quantize(g.t(), sgc.reshape(-1, 1), E4M3, width=pad16(m))
                dw = scaled_mm(gqt, xqt.t(), sgc.reciprocal().reshape(-1, 1), sxc.reciprocal(), None,
                               weight.dtype)
        else:
            ag = _reduce_max(amax(g), plan.group)
            sg = pow2_scale(state.scale_amax(G, ag, E5M2) if state.delayed else ag, E5M2)
            sw = saved[-1]
            if need_x:
                wqt = quantize(weight.t(), sw, E4M3, saturate=state.delayed)  # the forward's fp8 W, transposed
                dx = scaled_mm(quantize(g, sg, E5M2, saturate=state.delayed), wqt.t(), sg.reciprocal(),
                               sw.reciprocal(), None, ctx.x_dtype)
            if need_w:
                xqt, sx, _ = saved
                gqt = quantize(g.t(), sg, E5M2, saturate=state.delayed, width=pad16(m))
                dw = scaled_mm(gqt, xqt.t(), sg.reciprocal(), sx.reciprocal(), None, weight.dtype)
            if state.delayed:
                state.record(G, ag)
        if need_b:
            db = g.sum(dim=0, dtype=torch.float32).to(ctx.bias_dtype)
        return dx, dw, db, None


@torch.compiler.disable
def _delayed_eager(x, weight, bias, plan):
    """Delayed scaling updates its history inside the autograd function (the gradient's amax
    is only known in the backward); dynamo cannot trace that mutation, so under torch.compile
    these linears run eagerly, with a graph break around each (the rest of a block compiles)."""
    return _FP8Linear.apply(x, weight, bias, plan)


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], state: FP8State,
               group=None, parallel: Optional[str] = None) -> torch.Tensor:
    """F.linear(x, weight, bias) with the GEMMs (forward, dgrad, wgrad) in FP8 under `state`'s
    recipe. group / parallel: the TP group and what it splits ("column" or "row"), so the
    amaxes are reduced where a single rank would see more of the tensor."""
    lead, k = x.shape[:-1], x.shape[-1]
    train = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)  # else save nothing
    apply = _delayed_eager if state.delayed and torch.compiler.is_compiling() else _FP8Linear.apply
    out = apply(x.reshape(-1, k).contiguous(), weight, bias, _Plan(state, group, parallel, train))
    return out.reshape(*lead, out.shape[-1])


def fp8_supported(device: torch.device) -> bool:
    """_scaled_mm runs on CPU, and on CUDA from compute capability 8.9 (Ada, Hopper)."""
    if device.type != "cuda":
        return True
    return torch.cuda.get_device_capability(device) >= (8, 9)


__all__ = ["DEFAULT_HISTORY", "E4M3", "E5M2", "FP8State", "FP8_MAX", "RECIPES", "amax", "fp8_linear", "fp8_supported",
           "pow2_scale", "quantize", "scaled_mm"]
