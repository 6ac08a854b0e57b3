"""Parity checks shared by the DiT families' tests (HunyuanVideo, FLUX): our module against
diffusers' with the same weights, outputs and every parameter gradient, and sharded runs
against one rank."""

import torch


def random_diffusers_model(cls, config, seed=0):
    """A diffusers model of class cls for our config, every parameter random."""
    torch.manual_seed(seed)
    model = cls(**config.to_diffusers()).eval()
    with torch.no_grad():  # non-trivial values everywhere (diffusers zero-inits some layers)
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def assert_grads_match(grads, ref_grads, tol):
    """Every gradient within rel err tol of the reference; a reference gradient that is zero
    in exact arithmetic (e.g. HunyuanVideo's refiner key bias, to which softmax is invariant)
    holds rounding noise only, and so must ours."""
    assert set(grads) == set(ref_grads)
    scale = max(g.norm().item() for g in ref_grads.values())
    for name, ref in ref_grads.items():
        if ref.norm() > 1e-8 * scale:
            assert rel(grads[name], ref) <= tol, name
        else:
            assert grads[name].norm() <= 1e-8 * scale, name


def assert_matches_diffusers(ref, ours, inp, out_tol=1e-5, grad_tol=1e-5, exact=False):
    """ours(**inp) equals ref(**inp).sample, and the gradients of a weighted sum of the
    output equal diffusers' for every parameter (ours exported under diffusers' names).

    exact: diffusers runs in float64 (the same weights and inputs, widened), so the
    tolerance bounds our float32 rounding alone. Two float32 runs each carry their own:
    FLUX's smallest gradients (qk-norm and key weights of the last single-stream block,
    1e-4 of the largest, where attention is peaked) come out of float32 with rel err up to
    ~7e-6 in diffusers and ours alike, so the two can differ by more than 1e-5."""
    import copy

    from dancegrpo_hpc.models.common.weights import export_state_dict

    if exact:
        ref = copy.deepcopy(ref).double()
        ref_inp = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inp.items()}
    else:
        ref_inp = inp
    expected = ref(**ref_inp, return_dict=False)[0]
    got = ours(**inp)
    assert got.shape == expected.shape
    assert rel(got, expected) <= out_tol
    weights = torch.linspace(-1, 1, got.numel()).view_as(got)
    (expected * weights.to(expected.dtype)).sum().backward()
    (got * weights).sum().backward()
    assert_grads_match(export_state_dict(ours, tensor_of=lambda p: p.grad),
                       {n: p.grad for n, p in ref.named_parameters()}, grad_tol)
