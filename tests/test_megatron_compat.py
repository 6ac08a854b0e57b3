"""megatron-core's tensor-parallel layers and sequence-parallel mappings run on CPU
(gloo) through the compatibility layer, and match unsharded computations."""

import pytest
import torch
from dist_utils import run_ranks

from dancegrpo_hpc.distributed import megatron_compat

pytestmark = pytest.mark.distributed


def _sp_linears(rank, world_size):
    from megatron.core import tensor_parallel
    from megatron.core.model_parallel_config import ModelParallelConfig

    from dancegrpo_hpc.distributed import parallel

    parallel.initialize(tp=world_size)
    assert megatron_compat.cpu_enabled()
    torch.manual_seed(0)  # same full weights and inputs on every rank
    w1, w2 = torch.randn(16, 8), torch.randn(8, 16)
    x = torch.randn(6, 2, 8, requires_grad=True)  # [sequence, batch, hidden]
    ref = torch.nn.functional.gelu(x @ w1.t()) @ w2.t()
    ref.square().sum().backward()
    cfg = ModelParallelConfig(tensor_model_parallel_size=world_size, sequence_parallel=True,
                              use_cpu_initialization=True, perform_initialization=False)
    col = tensor_parallel.ColumnParallelLinear(8, 16, config=cfg, init_method=torch.nn.init.zeros_, bias=False)
    row = tensor_parallel.RowParallelLinear(16, 8, config=cfg, init_method=torch.nn.init.zeros_, bias=False,
                                            input_is_parallel=True, skip_bias_add=False)
    shard = 16 // world_size
    with torch.no_grad():
        col.weight.copy_(w1[rank * shard:(rank + 1) * shard])
        row.weight.copy_(w2[:, rank * shard:(rank + 1) * shard])
    seq = 6 // world_size
    x_local = x.detach()[rank * seq:(rank + 1) * seq].clone().requires_grad_(True)
    out = row(torch.nn.functional.gelu(col(x_local)[0]))[0]
    out.square().sum().backward()
    return {
        "out": (out.detach(), ref.detach()[rank * seq:(rank + 1) * seq]),
        "x_grad": (x_local.grad, x.grad[rank * seq:(rank + 1) * seq]),
        "w1_grad": (col.weight.grad, w1.grad if w1.grad is not None else None),
    }


def test_sequence_parallel_linears_on_gloo():
    results = run_ranks(2, _sp_linears)
    for r in results:
        assert torch.allclose(r["out"][0], r["out"][1], atol=1e-5)
        assert torch.allclose(r["x_grad"][0], r["x_grad"][1], atol=1e-4)


def test_compat_touches_only_megatron_modules():
    import importlib

    before = torch.cuda.current_device
    megatron_compat.enable_cpu()
    try:
        assert megatron_compat.cpu_enabled()
        assert torch.cuda.current_device is before  # torch itself is not patched
        mappings = importlib.import_module("megatron.core.tensor_parallel.mappings")
        assert mappings.torch.cuda.current_device() == torch.device("cpu")
        assert mappings.torch.Tensor is torch.Tensor and mappings.torch.empty is torch.empty
    finally:
        megatron_compat.disable_cpu()
    assert not megatron_compat.cpu_enabled()
    assert importlib.import_module("megatron.core.tensor_parallel.mappings").torch is torch
