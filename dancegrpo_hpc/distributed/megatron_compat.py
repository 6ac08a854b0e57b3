"""megatron-core on CPU: the small compatibility layer our CPU runs (gloo) need.

megatron-core allocates its communication buffers with
`device=torch.cuda.current_device()` (sequence-parallel gathers and
reduce-scatters, the all-to-all, the global memory buffer, the backward of the
column-parallel linear). On a machine without CUDA that call raises. Rather
than patch torch, `enable_cpu()` gives exactly those megatron-core modules
their own view of `torch`, identical to torch except that
`cuda.current_device()` names the CPU. Every other module, and torch itself,
is untouched; `disable_cpu()` restores the modules.
"""

from __future__ import annotations

import importlib
import types

import torch

# The megatron-core modules that allocate on torch.cuda.current_device() on the
# paths we use (tensor_parallel.mappings / layers / utils, GlobalMemoryBuffer in core.utils).
MODULES = (
    "megatron.core.tensor_parallel.mappings",
    "megatron.core.tensor_parallel.layers",
    "megatron.core.tensor_parallel.utils",
    "megatron.core.utils",
)


class _CudaOnCpu:
    """torch.cuda as the patched modules see it: current_device() is the CPU."""

    @staticmethod
    def current_device() -> torch.device:
        return torch.device("cpu")

    def __getattr__(self, name):
        return getattr(torch.cuda, name)


class _TorchOnCpu(types.ModuleType):
    """torch as the patched modules see it: torch, with cuda replaced by _CudaOnCpu."""

    def __init__(self):
        super().__init__("torch")
        self.cuda = _CudaOnCpu()

    def __getattr__(self, name):
        return getattr(torch, name)


_VIEW = _TorchOnCpu()


def enable_cpu() -> None:
    """Let megatron-core's communication run on CPU tensors (gloo)."""
    for name in MODULES:
        module = importlib.import_module(name)
        if module.torch is torch:
            module.torch = _VIEW


def disable_cpu() -> None:
    for name in MODULES:
        module = importlib.import_module(name)
        if module.torch is _VIEW:
            module.torch = torch


def cpu_enabled() -> bool:
    return all(importlib.import_module(name).torch is _VIEW for name in MODULES)
