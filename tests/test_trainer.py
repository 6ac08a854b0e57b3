"""The GRPO trainer end to end on the tiny synthetic world: outputs, reward
failures, non-finite steps, data-parallel equivalence and kill -9 resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from dist_utils import run_ranks
from trainer_utils import TinyWorld, tiny_config

from dancegrpo_hpc.rewards import register_reward
from dancegrpo_hpc.rl.trainer import Trainer

HERE = os.path.dirname(os.path.abspath(__file__))
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


def _parallel_run(rank, world, output_dir, parallel):
    config = tiny_config(os.path.join(output_dir, f"w{world}-{sorted(parallel.items())}"),
                         train={"iterations": 2, "updates_per_rollout": 2}, checkpoint={"every": 0},
                         parallel=parallel)
    trainer = Trainer(config, world=TinyWorld())
    try:
        trainer.train()
        from dancegrpo_hpc.models.hunyuan_video.weights import export_state_dict

        from dancegrpo_hpc.rl.optim import local_optimizer

        state = local_optimizer(trainer.optimizer).state
        owned = sum(p.numel() for p in state)  # parameters whose AdamW moments live on this rank
        total = sum(p.numel() for p in trainer.params)
        return list(trainer.history), export_state_dict(trainer.model), (owned, total)  # weights gathered over TP
    finally:
        trainer.close()


def _dp_run(rank, world, output_dir):
    return _parallel_run(rank, world, output_dir, {"zero": True})


@pytest.mark.distributed
def test_two_rank_data_parallel_equals_one_rank(tmp_path):
    (single,) = run_ranks(1, _dp_run, str(tmp_path))
    both = run_ranks(2, _dp_run, str(tmp_path))
    h1, w1, (owned1, total) = single
    assert owned1 == total
    owned = [o for _, _, (o, _) in both]
    assert sum(owned) == total and max(owned) < 0.75 * total, "ZeRO-1: AdamW state split over the two ranks"
    for h2, w2, _ in both:
        for a, b in zip(h1, h2):
            for key in COMPARED:
                assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(a[key])), (key, a[key], b[key])
        for name in w1:
            torch.testing.assert_close(w2[name], w1[name], rtol=1e-5, atol=1e-6)


@pytest.mark.distributed
@pytest.mark.parametrize("parallel", [{"tensor": 2, "sequence_parallel": True}, {"ulysses": 2}])
def test_tensor_and_ulysses_parallel_training_equals_one_rank(tmp_path, parallel):
    """Two ranks holding one model replica (TP + SP, or Ulysses): the same losses
    and updated weights as the unsharded run."""
    (single,) = run_ranks(1, _parallel_run, str(tmp_path), {})
    sharded = run_ranks(2, _parallel_run, str(tmp_path), parallel)
    h1, w1, _ = single
    for h2, w2, _ in sharded:
        for a, b in zip(h1, h2):
            for key in ("reward_mean", "loss", "grad_norm"):
                assert abs(a[key] - b[key]) <= 2e-5 * max(1.0, abs(a[key])), (key, a[key], b[key])
        for name in w1:
            # Adam turns float noise in near-zero gradients into up to ~1% of a step (lr 1e-3)
            torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5)


def _run(output_dir, iterations, resume, ranks=1):
    script = [os.path.join(HERE, "run_tiny_training.py"), str(output_dir), str(iterations), resume]
    launcher = [sys.executable]
    if ranks > 1:  # torchrun with gloo ranks; its own session, so a kill can take the whole job
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    return subprocess.Popen(launcher + script, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=ranks > 1)


def _kill_during_iteration_3(victim, output_dir, ranks=1):
    latest = output_dir / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and not (latest.exists() and latest.read_text().strip() == "iter_0000002"):
        assert victim.poll() is None, victim.communicate()[0]
        time.sleep(0.05)
    if ranks > 1:
        os.killpg(victim.pid, signal.SIGKILL)  # the launcher and every rank at once
    else:
        os.kill(victim.pid, signal.SIGKILL)  # now inside iteration 3
    victim.wait()
    assert latest.read_text().strip() == "iter_0000002"


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
    victim = _run(tmp_path / "killed", 4, "none")
    _kill_during_iteration_3(victim, tmp_path / "killed")
    resumed = _run(tmp_path / "killed", 4, "auto")
    out_resumed, out_full = resumed.communicate(timeout=600)[0], full.communicate(timeout=600)[0]
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
    out_full = full.communicate(timeout=600)[0]  # one job at a time: 2 cores
    assert full.returncode == 0, out_full
    victim = _run(tmp_path / "killed", 4, "none", ranks=2)
    _kill_during_iteration_3(victim, tmp_path / "killed", ranks=2)
    resumed = _run(tmp_path / "killed", 4, "auto", ranks=2)
    out_resumed = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, out_resumed
    assert "[resume] from" in out_resumed
    _assert_same_run(tmp_path / "full", tmp_path / "killed")