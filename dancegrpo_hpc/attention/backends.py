"""Attention backends behind one signature: (q, k, v, mask, config, head_ids) -> out,
all tensors [B, S, H, D] in the joint sequence's order (see mask.py).

sdpa runs anywhere. flash (flash-attn), xformers and te (Transformer Engine)
need CUDA and their package; they are imported when first used and fail with
one clear line otherwise. The three packed backends drop invalid tokens and
attend over each sample's valid tokens (varlen), which is the same function as
the masked dense attention for every valid query; outputs at invalid positions
(padding, never read downstream) are zero.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..checks import InputError
from .mask import JointMask


# SDPA's kernels by name (torch.nn.attention.SDPBackend members), in the order tried on CUDA by
# default: cuDNN first, since on Hopper it is the fastest (H200, 24 x 128 heads, 12,856 tokens, bf16:
# forward 3.25 ms vs flash 5.60 ms, forward + backward 12.9 vs 22.3 ms; docs/GPU_VALIDATION.md), then
# torch's flash-attention 2, the memory-efficient kernel and the math fallback. A kernel that cannot
# run a call (dtype, mask, head size) is skipped for the next one.
SDPA_KERNELS = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                "math": "MATH"}
DEFAULT_CUDA_KERNELS = ("cudnn", "flash", "efficient", "math")


# Read once at import: the kernel context is entered inside torch.compile'd blocks, where dynamo
# traces sdpa_kernel (with set_priority) but not signature inspection or caches.
_TAKES_PRIORITY = "set_priority" in inspect.signature(sdpa_kernel).parameters  # torch >= 2.6


def _kernel_context(q, config):
    """SDPA kernels in a deliberate priority order on CUDA (config.sdpa_kernels, or
    DEFAULT_CUDA_KERNELS); on CPU torch's own choice."""
    names = getattr(config, "sdpa_kernels", None)
    if names is None and q.device.type != "cuda":
        return contextlib.nullcontext()
    kernels = [getattr(SDPBackend, SDPA_KERNELS[n]) for n in (names or DEFAULT_CUDA_KERNELS)]
    if _TAKES_PRIORITY:
        return sdpa_kernel(kernels, set_priority=True)
    return sdpa_kernel(kernels)  # the listed kernels, in torch's own order


class _GradInOutputLayout(torch.autograd.Function):
    """Identity whose backward hands on the gradient in the memory layout of the output.

    Why: PyTorch caches cuDNN's SDPA backward graph under a key of q, k and v's shapes and
    strides only (aten/src/ATen/native/cudnn/MHA.cpp, run_cudnn_SDP_bprop / MHACacheKeyWrapper),
    while the graph is built for the strides of the first grad_output it saw. Our dual-stream
    blocks' attention output reaches two linears through a split (contiguous gradient), the
    single-stream blocks' through a concatenation with the MLP branch (a gradient slice with a
    row stride of hidden + mlp_hidden): same q, k, v, so one cached graph read the other's
    gradient with the wrong strides. On the H200 that failed at 12,856 tokens with
    `mha_graph.execute(...).is_good()` (or a later CUBLAS_STATUS_EXECUTION_FAILED) and at small
    sizes read out of place silently. Giving every call the gradient in the output's own
    strides (which follow q's, part of the key) makes the cached graph right for each call.
    Costs one copy of the output's size when the layouts differ (6.6 MB at that size)."""

    @staticmethod
    def forward(ctx, out):
        ctx.layout = (tuple(out.shape), out.stride())
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        shape, stride = ctx.layout
        if grad.stride() == stride:
            return grad
        return torch.empty_strided(shape, stride, dtype=grad.dtype, device=grad.device).copy_(grad)


def grad_in_output_layout(out: torch.Tensor) -> torch.Tensor:
    return _GradInOutputLayout.apply(out)


def _sdpa(q, k, v, attn_mask=None, config=None):
    with _kernel_context(q, config):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=attn_mask)
    if out.requires_grad and out.device.type == "cuda":
        out = grad_in_output_layout(out)
    return out.transpose(1, 2)


def sdpa(q, k, v, mask: JointMask, config, head_ids=None):
    """When each sample's valid keys are a prefix of its sequence, runs of consecutive
    samples with the same prefix attend over it without any mask (the same function
    as the masked attention, without the mask's cost or the padded keys). GRPO groups
    share a prompt, so a rollout batch is usually a single run."""
    prefixes = mask.key_prefixes(q.shape[0])
    if prefixes is None:
        return _sdpa(q, k, v, mask.key_valid(q.shape[0], q.device)[:, None, None, :], config)
    outs, start = [], 0
    for end in range(1, len(prefixes) + 1):
        if end == len(prefixes) or prefixes[end] != prefixes[start]:
            n = prefixes[start]
            outs.append(_sdpa(q[start:end], k[start:end, :n], v[start:end, :n], config=config))
            start = end
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


def _require(module: str, backend: str, extra: str = "gpu"):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise InputError(
            f"attention backend {backend!r} needs the {module.split('.')[0]} package and a CUDA GPU ({exc}); "
            f"install it (pip install 'dancegrpo-hpc[{extra}]') or use attention backend 'sdpa'"
        ) from None


def _require_cuda(q, backend: str):
    if q.device.type != "cuda":
        raise InputError(f"attention backend {backend!r} runs on CUDA tensors only; got {q.device}. Use 'sdpa' on CPU")


class Packed:
    """The valid tokens of a batch laid end to end (varlen layout)."""

    def __init__(self, mask: JointMask, batch: int, device):
        valid = mask.key_valid(batch, device)
        self.index = valid.reshape(-1).nonzero().squeeze(1)
        lengths = valid.sum(dim=1, dtype=torch.int32)
        self.cu_seqlens = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
        self.max_len = int(lengths.max())
        self.shape = (batch, mask.length)

    def pack(self, x):
        return x.reshape(-1, *x.shape[2:]).index_select(0, self.index)

    def unpack(self, y):
        out = y.new_zeros(self.shape[0] * self.shape[1], *y.shape[1:])
        return out.index_copy(0, self.index, y).view(*self.shape, *y.shape[1:])


def flash(q, k, v, mask: JointMask, config, head_ids=None):
    fa = _require("flash_attn", "flash")
    _require_cuda(q, "flash")
    p = Packed(mask, q.shape[0], q.device)
    out = fa.flash_attn_varlen_func(p.pack(q), p.pack(k), p.pack(v), p.cu_seqlens, p.cu_seqlens, p.max_len, p.max_len)
    return p.unpack(out)


def xformers(q, k, v, mask: JointMask, config, head_ids=None):
    xops = _require("xformers.ops", "xformers")
    _require_cuda(q, "xformers")
    p = Packed(mask, q.shape[0], q.device)
    lengths = (p.cu_seqlens[1:] - p.cu_seqlens[:-1]).tolist()
    bias = xops.fmha.attn_bias.BlockDiagonalMask.from_seqlens(lengths)
    out = xops.memory_efficient_attention(p.pack(q)[None], p.pack(k)[None], p.pack(v)[None], attn_bias=bias)
    return p.unpack(out[0])


@functools.lru_cache(maxsize=None)
def _te_module(heads: int, head_dim: int):
    te = _require("transformer_engine.pytorch", "te")
    return te.DotProductAttention(heads, head_dim, attention_dropout=0.0, qkv_format="thd", attn_mask_type="padding")


def te(q, k, v, mask: JointMask, config, head_ids=None):
    _require_cuda(q, "te")
    module = _te_module(q.shape[2], q.shape[3])
    p = Packed(mask, q.shape[0], q.device)
    out = module(p.pack(q), p.pack(k), p.pack(v), cu_seqlens_q=p.cu_seqlens, cu_seqlens_kv=p.cu_seqlens,
                 max_seqlen_q=p.max_len, max_seqlen_kv=p.max_len)
    return p.unpack(out.view(-1, q.shape[2], q.shape[3]))


def _sliding_tile(q, k, v, mask, config, head_ids=None):
    from .sliding_tile import sliding_tile_attention

    return sliding_tile_attention(q, k, v, mask, config, head_ids)


BACKENDS: Dict[str, Callable] = {"sdpa": sdpa, "flash": flash, "xformers": xformers, "te": te, "sliding_tile": _sliding_tile}
