"""parallel.initialize seeds megatron-core's CUDA RNG tracker, from which its parallel
linears draw their GPU weight init (issue #14: unseeded, HunyuanVideoDiT(device="cuda")
raised "cuda rng state model-parallel-rng is not added").

On CPU the real megatron seeding runs against a fake CUDA generator (a seed counter that
torch.cuda's get/set/manual_seed read and write), so the test checks the tracker's states,
megatron's own seed formula, the per-rank seeds over TP ranks and the idempotency."""

import pytest
import torch
from dist_utils import run_ranks

pytestmark = pytest.mark.distributed


class FakeCudaRng:
    """torch.cuda's RNG entry points over one integer: the state is the last seed."""

    def __init__(self, monkeypatch):
        self.seed = 12345
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "manual_seed", self.manual_seed)
        monkeypatch.setattr(torch.cuda, "get_rng_state", self.get_rng_state)
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set_rng_state)

    def manual_seed(self, seed):
        self.seed = int(seed)

    def get_rng_state(self, device="cuda"):
        return torch.tensor([self.seed], dtype=torch.int64)

    def set_rng_state(self, state, device="cuda"):
        self.seed = int(state[0])


def _seeded_states(rank, world_size, seed):
    import pytest as _pytest  # monkeypatch outside a test function

    from megatron.core import tensor_parallel

    from dancegrpo_hpc.distributed import parallel

    patch = _pytest.MonkeyPatch()
    try:
        rng = FakeCudaRng(patch)
        parallel.initialize(tp=world_size, backend="gloo", seed=seed)  # gloo: the fake says CUDA is there
        states = {k: int(v[0]) for k, v in tensor_parallel.get_cuda_rng_tracker().get_states().items()}
        kept = rng.seed
        parallel.initialize(tp=world_size, backend="gloo", seed=seed)  # groups exist: re-seeds without "seed already exists"
        again = {k: int(v[0]) for k, v in tensor_parallel.get_cuda_rng_tracker().get_states().items()}
        return {"states": states, "again": again, "process_rng_kept": kept,
                "expected": parallel.model_parallel_seeds(seed, rank)}
    finally:
        patch.undo()


def test_initialize_seeds_the_tracker_per_tp_rank():
    results = run_ranks(2, _seeded_states, 7)
    for rank, r in enumerate(results):
        # megatron's formula (tensor_parallel/random.py model_parallel_cuda_manual_seed): dp = seed,
        # tp = seed + 2718 + tp_rank
        assert r["states"]["data-parallel-rng"] == 7
        assert r["states"]["model-parallel-rng"] == 7 + 2718 + rank
        assert {k: r["states"][k] for k in r["expected"]} == r["expected"]
        assert r["again"] == r["states"]
        assert r["process_rng_kept"] == 12345  # the caller's CUDA RNG state is restored
    assert results[0]["states"]["model-parallel-rng"] != results[1]["states"]["model-parallel-rng"]


def test_no_cuda_no_seeding():
    from dancegrpo_hpc.distributed import parallel

    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")
    assert parallel.seed_model_parallel_rng(0) is False


@pytest.mark.gpu
def test_dit_builds_with_random_init_on_cuda():
    """The issue's failure: megatron's GPU init forks the model-parallel RNG state."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from dancegrpo_hpc.distributed import parallel
    from dancegrpo_hpc.models.hunyuan_video import HunyuanVideoDiT, preset

    parallel.destroy()
    parallel.initialize(seed=3)
    try:
        first = HunyuanVideoDiT(preset("tiny"), device="cuda").state_dict()
        parallel.initialize(seed=3)
        second = HunyuanVideoDiT(preset("tiny"), device="cuda").state_dict()
        name = next(k for k in first if k.endswith("attn.to_qkv.weight"))
        assert first[name].is_cuda and first[name].std() > 0
        # megatron's GPU init draws the TP linears from the tracker's model-parallel state (seeded)
        assert torch.equal(first[name], second[name])
    finally:
        parallel.destroy()
