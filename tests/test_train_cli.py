"""The entry point: one-line config errors before any heavy work (the toy run under
torchrun with two gloo ranks is in test_reward_pool.py, beside the reward pool run)."""

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
