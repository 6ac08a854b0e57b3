"""LoRA in our linears (dancegrpo_hpc/distributed/lora.py) against diffusers + peft on a tiny
HunyuanVideo DiT: the same adapters (non-zero B) give the same output and the same adapter
gradients; the exported dict loads with diffusers' load_lora_weights and gives the same
output; freezing, adapters off, merging and the errors. TP parity: test_lora_distributed.py."""

import pytest
import torch
import torch.nn as nn
from hv_utils import diffusers_model, inputs, rel

from dancegrpo_hpc.checks import InputError
from dancegrpo_hpc.distributed import lora
from dancegrpo_hpc.models.hunyuan_video import PRESETS, HunyuanVideoDiT
from dancegrpo_hpc.models.hunyuan_video.weights import plan

peft = pytest.importorskip("peft")
diffusers = pytest.importorskip("diffusers")

# peft names as the public recipes write them, plus the modulation, the embedders' first
# linears and both proj_out (single blocks: packed row-parallel; the head: replicated)
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
           "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out",
           "norm1.linear", "norm.linear", "linear_1"]
RANK, ALPHA = 4, 8.0  # scaling 2: alpha != rank, so the exported dict must carry it


def weight_plan(model):
    """The model's weight plan: its method once the family provides one, else the plan in weights.py."""
    return None if hasattr(model, "weight_plan") else (lambda r: plan(model, r))


def adapted(ref, targets=TARGETS, seed=3):
    """Our model of the diffusers model `ref` with adapters whose B (and A) are random."""
    ours = HunyuanVideoDiT.from_diffusers(ref)
    names = lora.apply_lora(ours, RANK, ALPHA, targets, plan=weight_plan(ours))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.lora_parameters(ours):
            p.normal_(0.0, 0.1, generator=gen)
    return ours, names


def test_matches_diffusers_with_peft_outputs_and_adapter_gradients():
    from peft import LoraConfig
    from peft.tuners.tuners_utils import BaseTunerLayer

    ref = diffusers_model("tiny")
    ours, names = adapted(ref)
    ref.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS))
    assert names == sorted(n for n, m in ref.named_modules() if isinstance(m, BaseTunerLayer))  # peft's matching
    adapters = lora.lora_adapters(ours)
    with torch.no_grad():
        for name in names:
            layer = ref.get_submodule(name)
            layer.lora_A["default"].weight.copy_(adapters[name].lora_A)
            layer.lora_B["default"].weight.copy_(adapters[name].lora_B)
    inp = inputs(PRESETS["tiny"])
    out, expected = ours(**inp), ref(**inp, return_dict=False)[0]
    with torch.no_grad(), lora.adapters_enabled(ours, False):
        assert rel(ours(**inp), expected) > 1e-2  # the adapters matter
    assert rel(out, expected) <= 1e-5
    weights = torch.linspace(-1.0, 1.0, out.numel()).view_as(out)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    for name in names:
        layer = ref.get_submodule(name)
        assert rel(adapters[name].lora_A.grad, layer.lora_A["default"].weight.grad) <= 1e-5, name
        assert rel(adapters[name].lora_B.grad, layer.lora_B["default"].weight.grad) <= 1e-5, name


def test_exported_dict_loads_with_diffusers_load_lora_weights(tmp_path):
    from diffusers import HunyuanVideoPipeline

    ref = diffusers_model("tiny")
    ours, names = adapted(ref)
    state = lora.lora_state_dict(ours)
    assert set(state) == {f"transformer.{n}.lora_{f}.weight" for n in names for f in "AB"}
    q = "transformer.transformer_blocks.0.attn.to_q"
    d = PRESETS["tiny"].hidden_size
    assert state[f"{q}.lora_A.weight"].shape == (RANK, d) and state[f"{q}.lora_B.weight"].shape == (d, RANK)
    inp = inputs(PRESETS["tiny"])
    with torch.no_grad():
        expected = ours(**inp)
    # diffusers' own writer and a pipeline's load_lora_weights (no alphas in the file: alpha = r)
    HunyuanVideoPipeline.save_lora_weights(str(tmp_path), {k[len("transformer."):]: v for k, v in state.items()})
    pipe = HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=ref, vae=None, scheduler=None,
                                text_encoder_2=None, tokenizer_2=None)
    pipe.load_lora_weights(str(tmp_path))
    with torch.no_grad():
        assert rel(ref(**inp, return_dict=False)[0], expected) <= 1e-5
    # and back into a fresh model of ours (same adapters, bit for bit)
    fresh = HunyuanVideoDiT.from_diffusers(diffusers_model("tiny"))
    lora.apply_lora(fresh, RANK, ALPHA, TARGETS, plan=weight_plan(fresh))
    lora.load_lora_state_dict(fresh, state)
    back = lora.lora_state_dict(fresh)
    assert all(torch.allclose(back[k], state[k], rtol=1e-6, atol=0) for k in state)
    with torch.no_grad():
        assert rel(fresh(**inp), expected) <= 1e-6


def test_init_freeze_and_adapters_off_is_exactly_the_base():
    ref = diffusers_model("tiny")
    ours = HunyuanVideoDiT.from_diffusers(ref)
    inp = inputs(PRESETS["tiny"])
    with torch.no_grad():
        base = ours(**inp)
    names = lora.apply_lora(ours, RANK, ALPHA, TARGETS, plan=weight_plan(ours))
    adapters = lora.lora_adapters(ours)
    a = adapters["transformer_blocks.0.ff.net.2"].lora_A  # peft's kaiming-uniform: |A| <= 1 / sqrt(fan_in)
    assert 0.8 / a.shape[1] ** 0.5 < a.abs().max() <= 1 / a.shape[1] ** 0.5
    assert all(not ad.lora_B.any() for ad in adapters.values())
    with torch.no_grad():
        assert rel(ours(**inp), base) <= 1e-6  # B = 0: the adapters start as the identity (up to rounding)
        for p in lora.lora_parameters(ours):
            p.normal_(0.0, 0.1)
        assert rel(ours(**inp), base) > 1e-2
        with lora.adapters_enabled(ours, False):
            assert torch.equal(ours(**inp), base)
        assert rel(ours(**inp), base) > 1e-2  # back on
    params = lora.freeze_base(ours)
    trainable = [n for n, p in ours.named_parameters() if p.requires_grad]
    assert len(params) == len(trainable) == 2 * len(names) and all(lora.is_lora_parameter_name(n) for n in trainable)
    ours(**inp).square().sum().backward()
    assert all(p.grad is not None for p in params)
    assert all(p.grad is None for n, p in ours.named_parameters() if not lora.is_lora_parameter_name(n))


def test_merge_and_unmerge():
    ref = diffusers_model("tiny")
    ours, _ = adapted(ref)
    inp = inputs(PRESETS["tiny"])
    weights = {n: p.detach().clone() for n, p in ours.named_parameters()}
    with torch.no_grad():
        expected = ours(**inp)
        lora.merge_lora(ours)
        assert rel(ours(**inp), expected) <= 1e-5
        with pytest.raises(InputError, match="unmerge_lora"):
            with lora.adapters_enabled(ours, False):
                pass
        lora.unmerge_lora(ours)
        assert all(torch.allclose(p, weights[n], atol=1e-6) for n, p in ours.named_parameters())
        assert rel(ours(**inp), expected) <= 1e-6


def test_a_plain_module_uses_its_own_names():
    """A model without a weight plan: our names are diffusers'; parity with peft's injection."""
    from peft import LoraConfig, inject_adapter_in_model

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.Module()
            self.attn.to_q, self.attn.to_k = nn.Linear(8, 6), nn.Linear(8, 6)
            self.proj = nn.Linear(6, 3)

        def forward(self, x):
            return self.proj(self.attn.to_q(x) * self.attn.to_k(x))

    torch.manual_seed(0)
    ours, theirs = Tiny(), Tiny()
    theirs.load_state_dict(ours.state_dict())
    assert lora.apply_lora(ours, 2, 3.0, ["attn.to_q", "proj"]) == ["attn.to_q", "proj"]
    with torch.no_grad():
        for p in lora.lora_parameters(ours):
            p.normal_()
    theirs = inject_adapter_in_model(LoraConfig(r=2, lora_alpha=3.0, target_modules=["attn.to_q", "proj"]), theirs)
    peft.set_peft_model_state_dict(theirs, lora.lora_state_dict(ours, prefix=""))
    with torch.no_grad():
        for name in ("attn.to_q", "proj"):  # our export folds the scaling (3 / 2) into B; peft applies it
            theirs.get_submodule(name).lora_B["default"].weight.div_(1.5)
    x = torch.randn(5, 8)
    assert rel(ours(x), theirs(x)) <= 1e-6


def test_errors():
    ours = HunyuanVideoDiT.from_diffusers(diffusers_model("tiny"))
    p = weight_plan(ours)
    with pytest.raises(InputError, match=r"LoRA target 'attn.to_z' names no linear layer.*attn\.to_q") as err:
        lora.apply_lora(ours, RANK, ALPHA, ["to_q", "attn.to_z"], plan=p)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="names no linear layer"):
        lora.apply_lora(ours, RANK, ALPHA, r".*\.to_qq", plan=p)  # a regex, as peft reads a string
    with pytest.raises(InputError, match="names no linear layer"):  # the patch embedding is a convolution
        lora.apply_lora(ours, RANK, ALPHA, ["x_embedder.proj"], plan=p)
    with pytest.raises(InputError, match="rank"):
        lora.apply_lora(ours, 0, ALPHA, ["to_q"], plan=p)
    with pytest.raises(InputError, match="no adapters"):
        lora.freeze_base(ours)
    lora.apply_lora(ours, RANK, ALPHA, ["to_q"], plan=p)
    with pytest.raises(InputError, match="already"):
        lora.apply_lora(ours, RANK, ALPHA, ["to_q"], plan=p)
    state = lora.lora_state_dict(ours)
    with pytest.raises(InputError, match="no adapter here"):
        lora.load_lora_state_dict(ours, {**state, "transformer.proj_out.lora_A.weight": torch.zeros(RANK, 64)})
    key = next(iter(state))
    with pytest.raises(InputError, match="lacks lora_A / lora_B"):
        lora.load_lora_state_dict(ours, {k: v for k, v in state.items() if k != key})
    with pytest.raises(InputError, match="needs"):
        lora.load_lora_state_dict(ours, {k: v[:1] if "lora_A" in k else v for k, v in state.items()})


@pytest.mark.parametrize("fp8", [None, "current"])
def test_each_linear_kind_adds_its_term_at_one_rank(fp8):
    """Column (forward, forward_split), row, partial row (partial, TokenRouter.project) and
    nn.Linear, on plain and FP8 linears: output = base output + s x A^T B^T."""
    from megatron.core.model_parallel_config import ModelParallelConfig

    from dancegrpo_hpc.distributed import parallel
    from dancegrpo_hpc.distributed.sequence import TokenRouter
    from dancegrpo_hpc.distributed.spec import LayerSpec, LinearFactory

    parallel.ensure_initialized()
    factory = LinearFactory(LayerSpec("local", fp8=fp8), ModelParallelConfig(use_cpu_initialization=True))
    model = nn.Module()
    model.column, model.row, model.partial = factory.column(64, 96), factory.row(96, 64), factory.partial_row(96, 64)
    model.plain = nn.Linear(64, 32)
    lora.apply_lora(model, 3, 6.0, ["column", "row", "partial", "plain"])
    with torch.no_grad():
        for p in lora.lora_parameters(model):
            p.normal_()
    adapters = lora.lora_adapters(model)
    router = TokenRouter(parallel.ParallelContext.current())
    x64, x96 = torch.randn(5, 2, 64), torch.randn(5, 2, 96)
    runs = {"column": lambda: model.column(x64),
            "column split": lambda: torch.cat(model.column.forward_split(x64, [32, 64]), -1),
            "row": lambda: model.row(x96), "partial": lambda: model.partial.partial(x96),
            "plain": lambda: model.plain(x64)}
    with torch.no_grad():
        for run, output in runs.items():
            name = run.split()[0]
            a, x = adapters[name], (x96 if name in ("row", "partial") else x64)
            with lora.adapters_enabled(model, False):
                base = output()
            term = 2.0 * (x @ a.lora_A.T) @ a.lora_B.T
            assert rel(output() - base, term) <= 1e-5, run
        # one rank: project runs an adapted partial linear through partial() (a plain one as F.linear)
        assert torch.equal(router.project([(model.partial, x96)])[0], model.partial.partial(x96) + model.partial.bias)


def test_activation_checkpointed_blocks_keep_the_names():
    ref = diffusers_model("tiny")
    plain_model, names = adapted(ref)
    wrapped = HunyuanVideoDiT.from_diffusers(ref, checkpoint_fraction=1.0)
    assert lora.apply_lora(wrapped, RANK, ALPHA, TARGETS, plan=weight_plan(wrapped)) == names
    lora.load_lora_state_dict(wrapped, lora.lora_state_dict(plain_model))
    inp = inputs(PRESETS["tiny"])
    out, expected = wrapped(**inp), plain_model(**inp)
    assert rel(out, expected) <= 1e-6
    out.sum().backward()
    expected.sum().backward()
    for name, a in lora.lora_adapters(wrapped).items():
        assert rel(a.lora_B.grad, lora.lora_adapters(plain_model)[name].lora_B.grad) <= 1e-6, name
