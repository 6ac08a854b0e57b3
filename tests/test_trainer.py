"""The GRPO trainer end to end on the tiny synthetic world: outputs, reward
failures, non-finite steps, data-parallel equivalence and kill -9 resume."""

import json
import os
import sys
import time

import pytest
import torch

from dist_utils import finish_job, job_output, kill_job, run_ranks, start_job
from trainer_utils import TinyWorld, tiny_config

from dancegrpo_hpc.rewards import register_reward
from dancegrpo_hpc.rl.trainer import Trainer

HERE = os.path.dirname(os.path.abspath(__file__))
JOB_TIMEOUT_S = 600  # one tiny training job; tens of seconds on 2 quiet cores
COMPARED = ("reward_mean", "loss", "reward_test_brightness", "reward_test_contrast", "grad_norm", "clip_fraction")


def _train(config, world=None):
    trainer = Trainer(config, world=world or TinyWorld())
    try:
        summary = trainer.train()
        weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        return summary, list(trainer.history), weights
    finally:
        trainer.close()


def test_run_writes_metrics_summary_and_checkpoints(tmp_path):
    summary, history, _ = _train(tiny_config(tmp_path, logging={"tensorboard": True, "sample_grid": True}))
    lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert [m["iteration"] for m in lines] == [1, 2]
    for key in ("iteration", "reward_mean", "loss", "reward_test_brightness", "reward_test_contrast"):
        assert all(key in m for m in lines), key
    assert all(m["optimizer_steps"] == 1 and m["skipped_steps"] == 0 for m in lines)
    saved = json.load(open(tmp_path / "summary.json"))
    for key in ("reward_before", "reward_after", "iterations", "wall_s"):
        assert key in saved
    assert saved["iterations"] == 2 and saved["wall_s"] > 0
    assert open(tmp_path / "checkpoints" / "latest").read().strip() == "iter_0000002"
    assert (tmp_path / "reward_curve.png").exists() and (tmp_path / "samples.gif").exists()
    assert any(name.startswith("events") for name in os.listdir(tmp_path / "tensorboard"))


class _FailsFor:
    """Raises for one prompt's batch, returns NaN for another prompt's samples."""

    name = "flaky"

    def __call__(self, videos, prompts, **_):
        if "prompt 1" in prompts:
            raise RuntimeError("reward server unavailable")
        out = videos.mean(dim=(1, 2, 3, 4))
        out[[p == "prompt 2" for p in prompts]] = float("nan")
        return out


def test_reward_failures_drop_groups_and_training_continues(tmp_path):
    register_reward("flaky", lambda **_: _FailsFor(), replace=True)
    config = tiny_config(tmp_path, rewards=[{"name": "flaky", "weight": 1.0}],
                         rollout={"micro_batch": 4}, train={"iterations": 2}, data={"eval_prompts": 1})
    _, history, _ = _train(config)
    # each iteration sees 4 of the 8 prompts; prompts 1 and 2 appear once in the two iterations
    assert sum(m["dropped_groups"] for m in history) == 2
    assert sum(m["reward_failures"] for m in history) == 8
    for m in history:
        assert m["trained_samples"] == 16 - 4 * m["dropped_groups"]
        assert m["optimizer_steps"] == 1 and torch.isfinite(torch.tensor(m["loss"]))


def test_nonfinite_loss_step_is_skipped_and_reported(tmp_path, monkeypatch):
    import dancegrpo_hpc.rl.worker as worker

    real = worker.grpo_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 1 else loss), stats

    monkeypatch.setattr(worker, "grpo_loss", poisoned)
    config = tiny_config(tmp_path, train={"iterations": 1, "updates_per_rollout": 2})
    trainer = Trainer(config, world=TinyWorld())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.close()
    m = trainer.history[0]
    assert m["skipped_steps"] == 1 and m["optimizer_steps"] == 1
    assert any(not torch.equal(before[n], after[n]) for n in before), "the second, finite step must still update"
    assert all(torch.isfinite(p).all() for p in after.values())


# ---- sharded training equals one rank ---------------------------------------------------------------
# The sharded and the unsharded run add the same float32 terms in another order (TP splits the
# contractions, data-parallel and Ulysses ranks sum partial gradients), so they differ by rounding
# noise, and the comparison must not amplify that noise into a visible difference:
# - no ratio clipping (clip_range 1e3: the clamp never binds), so the objective is smooth. With
#   DanceGRPO's 1e-4, a ratio within rounding noise of the bound switches a sample's gradient on or off.
# - AdamW with eps 1e-4 (about the RMS gradient element here, 2e-4) instead of 1e-8. With 1e-8 the step
#   lr*m/(sqrt(v)+eps) is lr*sign(g) for any |g| >> 1e-8: a gradient that is zero in exact arithmetic
#   (a key bias, to which softmax is invariant) takes a full +-lr step in the direction of its rounding
#   noise. That made 1 weight of 16,384 differ by 2.5e-5 against atol 1e-5, in some runs. With eps E a
#   step moves at most 3*lr/E per unit of gradient difference (_weight_budget), and a gradient scaled
#   wrongly on some ranks now changes the weights (Adam with a tiny eps is blind to the scale).
# What is compared: the metrics, the gradients before every optimizer step, and the final weights.
LR, ADAM_EPS = 1e-3, 1e-4
EQUIVALENCE_TRAIN = {"iterations": 2, "updates_per_rollout": 2, "lr": LR, "adam_eps": ADAM_EPS, "clip_range": 1e3}
STEPS = 4  # optimizer steps: 2 iterations x 2 updates
# float32 rounding u = 6e-8. A reordered sum of n terms differs by ~sqrt(n) u times the terms' scale
# (n ~ 10^3 here: samples x timesteps x tokens), compounded over the blocks and, for the second
# iteration, the 4 sampling steps of its rollout: ~1e-6 (measured over DP, TP+SP and Ulysses: <= 3.9e-6
# per tensor). 3e-5 leaves a margin of ~8x; a real fault is >= 1e-2 (one of the 16 samples missing from
# a gradient: 6%; a wrong scale on a rank: 100%).
GRAD_RTOL = 3e-5
# The error of a reordered sum scales with the terms, not with the sum: a gradient that cancels to ~0
# (the key bias above) carries noise at the model's gradient scale (measured: up to 8.6e-7 of the largest
# tensor's norm). So each tensor is held to GRAD_RTOL x max(its norm, FLOOR x the largest tensor norm):
# 6e-6 of the largest norm at least, a margin of ~7x.
GRAD_FLOOR = 0.2
# Metrics: the loss is a mean of O(1) terms A*ratio (|A| <= 1.5 in groups of 4) that cancel to ~1e-4,
# so its rounding error is absolute, at the terms' scale (measured: <= 9e-7); rewards and grad norms
# follow the weights and the gradients (measured: 0 and <= 1.5e-8).
METRIC_ATOL = 2e-5
EQUIVALENCE_KEYS = ("reward_mean", "loss", "reward_test_brightness", "reward_test_contrast", "grad_norm")


def _parallel_run(rank, world, output_dir, parallel):
    from dancegrpo_hpc.models.hunyuan_video.weights import export_state_dict
    from dancegrpo_hpc.rl.optim import local_optimizer

    config = tiny_config(os.path.join(output_dir, f"w{world}-{sorted(parallel.items())}"), train=EQUIVALENCE_TRAIN,
                         checkpoint={"every": 0}, parallel=parallel)
    trainer = Trainer(config, world=TinyWorld())
    grads = []  # full (TP-gathered) gradients as the optimizer receives them, every step
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        grads.append(export_state_dict(trainer.model, tensor_of=lambda p: p.grad))
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    try:
        initial = export_state_dict(trainer.model)
        trainer.train()
        state = local_optimizer(trainer.optimizer).state
        owned = sum(p.numel() for p in state)  # parameters whose AdamW moments live on this rank
        total = sum(p.numel() for p in trainer.params)
        return {"history": list(trainer.history), "initial": initial, "grads": grads,
                "weights": export_state_dict(trainer.model), "owned": owned, "total": total}
    finally:
        trainer.close()


def _grad_tolerances(ref):
    """Per tensor: the norm its difference may reach (GRAD_RTOL, GRAD_FLOOR)."""
    floor = GRAD_FLOOR * max(g.norm().item() for g in ref.values())
    return {name: GRAD_RTOL * max(g.norm().item(), floor) for name, g in ref.items()}


def _weight_budget(ref_run, name):
    """How far the final weights may drift from the reference, given the gradient tolerances.
    Adam's step lr m/(sqrt(v) + E) (bias-corrected moments m = sum c_k g_k, v = sum d_k g_k^2) changes
    by at most (lr/E)(c_k + |m|/sqrt(v) sqrt(d_k)/4) per unit change of the k-th gradient; over <= 4
    steps |m|/sqrt(v) <= 1.01 and sum sqrt(d_k) <= 2, so <= 1.5 lr/E for a change of all past
    gradients: 3 lr/E keeps a factor 2. (Weight decay contracts differences; the weights' effect on
    later gradients is inside those gradients' tolerances.) Over STEPS steps: 3 (lr/E) STEPS x the sum
    of the gradient tolerances, plus one float32 rounding of w + step (2^-23 |w|) per step."""
    grads = sum(_grad_tolerances(g)[name] for g in ref_run["grads"])
    rounding = STEPS * 2.0**-23 * ref_run["weights"][name].norm().item()
    return 3 * LR / ADAM_EPS * STEPS * grads + rounding


def _assert_equivalent(ref, run):
    assert len(run["history"]) == len(ref["history"]) == 2 and len(run["grads"]) == len(ref["grads"]) == STEPS
    for a, b in zip(ref["history"], run["history"]):
        for key in EQUIVALENCE_KEYS:
            assert abs(a[key] - b[key]) <= METRIC_ATOL * max(1.0, abs(a[key])), (a["iteration"], key, a[key], b[key])
    for step, (g_ref, g_run) in enumerate(zip(ref["grads"], run["grads"])):
        assert set(g_run) == set(g_ref)
        for name, tol in _grad_tolerances(g_ref).items():
            diff = (g_run[name] - g_ref[name]).norm().item()
            assert diff <= tol, f"step {step} gradient of {name}: |diff| {diff:.3g} > {tol:.3g}"
    for name, w_ref in ref["weights"].items():
        moved = (w_ref - ref["initial"][name]).norm().item()
        diff = (run["weights"][name] - w_ref).norm().item()
        budget = _weight_budget(ref, name)
        assert diff <= budget, f"weights {name}: |diff| {diff:.3g} > {budget:.3g} (the update's norm: {moved:.3g})"


def _dp_run(rank, world, output_dir):
    return _parallel_run(rank, world, output_dir, {"zero": True})


@pytest.mark.distributed
def test_two_rank_data_parallel_equals_one_rank(tmp_path):
    (single,) = run_ranks(1, _dp_run, str(tmp_path))
    both = run_ranks(2, _dp_run, str(tmp_path))
    assert single["owned"] == single["total"]
    owned = [r["owned"] for r in both]
    assert sum(owned) == single["total"] and max(owned) < 0.75 * single["total"], \
        "ZeRO-1: AdamW state split over the two ranks"
    for run in both:
        _assert_equivalent(single, run)


@pytest.mark.distributed
@pytest.mark.parametrize("parallel", [{"tensor": 2, "sequence_parallel": True}, {"ulysses": 2}])
def test_tensor_and_ulysses_parallel_training_equals_one_rank(tmp_path, parallel):
    """Two ranks holding one model replica (TP + SP, or Ulysses): the same metrics, gradients
    and updated weights as the unsharded run."""
    (single,) = run_ranks(1, _parallel_run, str(tmp_path), {})
    for run in run_ranks(2, _parallel_run, str(tmp_path), parallel):
        _assert_equivalent(single, run)


def test_equivalence_check_catches_a_wrong_gradient_scale_and_a_missing_update():
    """The tolerances above hold real faults: a gradient 1% off, or a weight tensor whose last
    update was lost, fail; the reference itself passes."""
    torch.manual_seed(0)
    w0 = {"a": torch.randn(64, 32) * 0.02, "b": torch.randn(32)}
    grads = [{"a": torch.randn(64, 32) * 1e-3, "b": torch.randn(32) * 1e-4} for _ in range(STEPS)]
    weights = {n: w - LR * sum(torch.sign(g[n]) for g in grads) for n, w in w0.items()}
    history = [{"iteration": i + 1, **{k: 0.1 for k in EQUIVALENCE_KEYS}} for i in range(2)]
    ref = {"history": history, "initial": w0, "grads": grads, "weights": weights}
    _assert_equivalent(ref, ref)
    scaled = dict(ref, grads=[{n: g * 1.01 for n, g in step.items()} for step in grads])
    with pytest.raises(AssertionError, match="gradient of a"):
        _assert_equivalent(ref, scaled)
    lost = dict(ref, weights=dict(weights, b=weights["b"] + LR * torch.sign(grads[-1]["b"])))
    with pytest.raises(AssertionError, match="weights b"):
        _assert_equivalent(ref, lost)


def _run(output_dir, iterations, resume, ranks=1, pause_at=0):
    script = [os.path.join(HERE, "run_tiny_training.py"), str(output_dir), str(iterations), resume, str(pause_at)]
    launcher = [sys.executable]
    if ranks > 1:  # torchrun with gloo ranks
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    return start_job(launcher + script, f"{output_dir}.{resume}.log")


def _kill_inside_iteration_3(victim, output_dir, ranks=1):
    """Waits until every rank sits inside iteration 3 (run_tiny_training's pause: rollout done,
    update not begun; iteration 2's checkpoint saved), then kill -9. No race with a running
    trainer, however loaded the machine: the victim cannot move on."""
    markers = [output_dir / f"paused.rank{r}" for r in range(ranks)]
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not all(m.exists() for m in markers):
        assert victim.poll() is None, job_output(victim)[-3000:]
        if time.monotonic() > deadline:
            kill_job(victim)
            raise AssertionError(f"the victim never reached iteration 3:\n{job_output(victim)[-3000:]}")
        time.sleep(0.05)
    kill_job(victim)  # kill -9 the launcher and every rank at once
    assert (output_dir / "checkpoints" / "latest").read_text().strip() == "iter_0000002"


def _assert_same_run(full_dir, resumed_dir):
    a = [json.loads(x) for x in open(full_dir / "metrics.jsonl")]
    b = [json.loads(x) for x in open(resumed_dir / "metrics.jsonl")]
    assert [m["iteration"] for m in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):
        for key in COMPARED:
            assert x[key] == y[key], (x["iteration"], key, x[key], y[key])
    sa = json.load(open(full_dir / "summary.json"))
    sb = json.load(open(resumed_dir / "summary.json"))
    assert sa["reward_after"] == sb["reward_after"] and sa["reward_before"] == sb["reward_before"]


def test_kill9_mid_iteration_then_resume_matches_uninterrupted(tmp_path):
    full = _run(tmp_path / "full", 4, "none")
    victim = _run(tmp_path / "killed", 4, "none", pause_at=3)
    _kill_inside_iteration_3(victim, tmp_path / "killed")
    resumed = _run(tmp_path / "killed", 4, "auto")
    out_resumed, out_full = finish_job(resumed, JOB_TIMEOUT_S), finish_job(full, JOB_TIMEOUT_S)
    assert resumed.returncode == 0, out_resumed
    assert full.returncode == 0, out_full
    assert "[resume] from" in out_resumed
    _assert_same_run(tmp_path / "full", tmp_path / "killed")


@pytest.mark.distributed
@pytest.mark.slow
def test_kill9_two_ranks_then_resume_matches_uninterrupted(tmp_path):
    """torchrun with 2 data-parallel ranks (per-rank ZeRO-1 optimizer shards and RNG
    states): kill -9 the whole job inside iteration 3, resume, same metrics."""
    full = _run(tmp_path / "full", 4, "none", ranks=2)
    out_full = finish_job(full, JOB_TIMEOUT_S)  # one job at a time: 2 cores
    assert full.returncode == 0, out_full
    victim = _run(tmp_path / "killed", 4, "none", ranks=2, pause_at=3)
    _kill_inside_iteration_3(victim, tmp_path / "killed", ranks=2)
    resumed = _run(tmp_path / "killed", 4, "auto", ranks=2)
    out_resumed = finish_job(resumed, JOB_TIMEOUT_S)
    assert resumed.returncode == 0, out_resumed
    assert "[resume] from" in out_resumed
    _assert_same_run(tmp_path / "full", tmp_path / "killed")