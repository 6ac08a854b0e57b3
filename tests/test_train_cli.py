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


@pytest.mark.parametrize("argv", [
    ["--resume", "auto", "examples/toy_t2v.yaml", "train.iterations=13", "seed=3"],  # options first
    ["examples/toy_t2v.yaml", "train.iterations=13", "--resume", "auto", "seed=3"],  # between the overrides
    ["examples/toy_t2v.yaml", "train.iterations=13", "seed=3", "--resume", "auto"],  # last
])
def test_options_go_anywhere_among_the_config_and_overrides(monkeypatch, argv):
    """The README: extra arguments of the quick start (`--resume auto train.iterations=13`) in any order."""
    import dancegrpo_hpc.train as train
    from dancegrpo_hpc.cli import main as cli_main

    seen = []
    monkeypatch.setattr(train, "run", lambda args: seen.append(args) or 0)
    assert train.main(argv) == 0 and cli_main(["train", *argv]) == 0
    for args in seen:
        assert (args.config, args.overrides, args.resume) == (
            "examples/toy_t2v.yaml", ["train.iterations=13", "seed=3"], "auto")
    assert seen[1].command == "train"


def test_quickstart_arguments_reach_the_config_check(tmp_path):
    """tools/quickstart.sh appends its arguments after `CONFIG output_dir=...`: an option then an
    override reach the config (a bad key, so it stops at the one-line check)."""
    out = _train(TOY, f"output_dir={tmp_path}", "--resume", "auto", "train.lrr=1")
    assert out.returncode == 2 and "unknown key 'train.lrr'" in out.stderr, out.stderr
    assert "unrecognized arguments" not in out.stderr
