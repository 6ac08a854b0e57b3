"""The entry point: one-line config errors before any heavy work, and the toy run
under torchrun with two gloo ranks."""

import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, "examples", "toy_t2v.yaml")


def _train(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "dancegrpo_hpc.train", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("override, words", [
    ("train.lrr=1", "unknown key 'train.lrr'"),
    ("train.best_of_n=3", "train.best_of_n"),
    ("rollout.prompts_per_iteration=0", "rollout.prompts_per_iteration"),
    ("sampling.kind=euler", "sampling.kind"),
    ("train.lr=fast", "train.lr"),
    ("model.path=/no/such/dir", "model.path"),
])
def test_config_errors_are_one_line_and_fast(tmp_path, override, words):
    start = time.perf_counter()
    out = _train(TOY, f"output_dir={tmp_path}", override)
    assert out.returncode == 2, out.stderr
    lines = [x for x in out.stderr.strip().splitlines() if "Warning" not in x and "warnings.warn" not in x]
    assert len(lines) == 1 and words in lines[0], out.stderr
    assert "Traceback" not in out.stderr
    assert not os.path.exists(tmp_path / "checkpoints")
    assert time.perf_counter() - start < 60


def test_torchrun_two_ranks_toy_world(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "dancegrpo_hpc.train", TOY, f"output_dir={tmp_path}", "train.iterations=2",
           "rollout.prompts_per_iteration=2", "rollout.group_size=4", "rollout.micro_batch=2", "sampling.steps=4", "data.eval_prompts=2",
           "eval.samples_per_prompt=1", "logging.tensorboard=false", "checkpoint.every=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", THP_MEM_ALLOC_ENABLE="1")
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    metrics = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert [m["iteration"] for m in metrics] == [1, 2]
    assert all(m["trained_samples"] == 8 for m in metrics)
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["iterations"] == 2
    ckpt = tmp_path / "checkpoints" / "iter_0000002"
    assert (ckpt / "optim_rank0.pt").exists() and (ckpt / "optim_rank1.pt").exists()
