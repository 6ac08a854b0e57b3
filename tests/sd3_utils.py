"""Shared helpers for the SD3 transformer tests: a random diffusers reference model, inputs
(non-square latents smaller than the position table, so it is cropped) and the parity check
of outputs and every parameter gradient."""

import torch
from dit_parity import assert_grads_match, random_diffusers_model, rel  # noqa: F401  (rel: re-exported)

from dancegrpo_hpc.models.sd3 import PRESETS


def diffusers_model(preset="sd3-tiny", seed=0, **changes):
    from diffusers import SD3Transformer2DModel

    return random_diffusers_model(SD3Transformer2DModel, PRESETS[preset].replace(**changes), seed)


def inputs(cfg, batch=2, height=8, width=6, text_len=7, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, cfg.in_channels, height, width, generator=gen),
        encoder_hidden_states=torch.randn(batch, text_len, cfg.joint_attention_dim, generator=gen),
        pooled_projections=torch.randn(batch, cfg.pooled_projection_dim, generator=gen),
        timestep=torch.linspace(900.0, 100.0, batch),
    )


def assert_matches_diffusers(ref, ours, inp, tol=1e-5):
    """ours(**inp) equals ref(**inp).sample, and the gradients of a weighted sum of the output
    equal diffusers' for every parameter (ours exported under diffusers' names)."""
    from dancegrpo_hpc.models.sd3.weights import export_state_dict

    expected = ref(**inp, return_dict=False)[0]
    got = ours(**inp)
    assert got.shape == expected.shape
    assert rel(got, expected) <= tol
    weights = torch.linspace(-1, 1, got.numel()).view_as(got)
    (expected * weights).sum().backward()
    (got * weights).sum().backward()
    assert_grads_match(export_state_dict(ours, tensor_of=lambda p: p.grad),
                       {n: p.grad for n, p in ref.named_parameters()}, tol)
