"""Bad input (issue 13, section 3): each case is one line (InputError; exit 2 and
`dancegrpo-hpc train: error: ...` through the CLI), raised before any model loads; and
what a run reports when its inputs fail (held-out rewards, metrics.jsonl, summary.json)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from dancegrpo_hpc.checks import InputError
from dancegrpo_hpc.cli import main as cli_main
from dancegrpo_hpc.config import check_output_dir, config_from_dict, load_config
from dancegrpo_hpc.memory import GIB, check_memory, estimate_memory
from dancegrpo_hpc.outputs import MetricsLog, format_summary_line, read_metrics, write_summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, "examples", "toy_t2v.yaml")
HUGE = ["data.height=8192", "data.width=8192"]  # the toy world at 8192 x 8192: terabytes by the estimate


def one_line(fn, *args, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def cli_train(capsys, monkeypatch, *argv) -> str:
    """`dancegrpo-hpc train ARGV` in this process: exit 2 and one stderr line; returns it."""
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")  # train.run sets it otherwise, for the whole test session
    assert cli_main(["train", *argv]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip() and "warn" not in x.lower()]
    assert len(lines) == 1 and lines[0].startswith("dancegrpo-hpc train: error: "), lines
    return lines[0]


def strict_json(text: str):
    """json.loads that rejects NaN / Infinity, as jq, JavaScript and Go do."""
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def no_heavy_loads(monkeypatch):
    """Every heavy load (the DiT, the toy model, the world's VAE / encoders, the rewards)
    fails loudly: a check that runs after one of them is in the wrong place."""
    import dancegrpo_hpc.data
    import dancegrpo_hpc.models.toy
    import dancegrpo_hpc.rewards
    from dancegrpo_hpc.models.hunyuan_video.model import HunyuanVideoDiT

    def loud(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"{what} loaded before the bad input was reported")
        return fail

    monkeypatch.setattr(HunyuanVideoDiT, "from_diffusers", classmethod(loud("the DiT")))
    monkeypatch.setattr(dancegrpo_hpc.models.toy, "load_toy_model", loud("the toy DiT"))
    monkeypatch.setattr(dancegrpo_hpc.rewards, "build_rewards", loud("the reward models"))
    return lambda: monkeypatch.setattr(dancegrpo_hpc.data, "build_world", loud("the world (VAE, text encoders)"))


def toy(tmp_path, *overrides, paths=True):
    return load_config(TOY, [f"output_dir={tmp_path / 'run'}", *overrides], paths=paths)


def trainer(config, **kwargs):
    from dancegrpo_hpc.rl.trainer import Trainer

    return Trainer(config, **kwargs)


# ---------------------------------------------------------------------------------------------
# YAML and encodings

def test_malformed_yaml_file_names_file_line_and_column(tmp_path, capsys, monkeypatch):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: 1.0e-5\n  betas: [0.9, 0.99\n  iterations: 3\n")
    message = one_line(load_config, str(path))
    assert message.startswith(f"config file {path}: malformed YAML at line 4, column 13:"), message
    assert "bad.yaml: malformed YAML at line 4" in cli_train(capsys, monkeypatch, str(path))


def test_malformed_yaml_override_names_the_override_and_column(capsys, monkeypatch):
    message = one_line(load_config, None, ["train.betas=[0.9, 0.99"])
    assert message.startswith("config override 'train.betas=[0.9, 0.99': malformed YAML at column 11 of the value")
    line = cli_train(capsys, monkeypatch, "train.lr={")
    assert "config override 'train.lr={': malformed YAML at column 2 of the value" in line, line


def test_yaml_control_character_is_one_line(tmp_path):
    path = tmp_path / "ctl.yaml"
    path.write_bytes(b"seed: 1\noutput_dir: a\x01b\n")
    assert "malformed YAML at line 2, column 14: special characters are not allowed" in one_line(load_config,
                                                                                               str(path))


def test_non_utf8_config_names_the_file_and_line(tmp_path, capsys, monkeypatch):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("seed: 3\noutput_dir: runs/caf\u00e9\n".encode("latin-1"))
    message = one_line(load_config, str(path))
    assert message == f"config file {path}: not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8"
    assert "latin1.yaml: not UTF-8 text" in cli_train(capsys, monkeypatch, str(path))


def test_utf8_with_bom_still_loads(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes("\ufeffseed: 5\noutput_dir: runs/caf\u00e9\n".encode("utf-8"))
    config = load_config(str(path))
    assert config.seed == 5 and config.output_dir == "runs/caf\u00e9"


# ---------------------------------------------------------------------------------------------
# values through the command line

@pytest.mark.parametrize("override, words", [
    (f"seed={2**63}", "seed must be an integer in [0, 2^63 - 1]"),
    ("train.betas=[0.9, 1.5]", "train.betas[1] must lie in [0, 1)"),
    ("train.weight_decay=-0.1", "train.weight_decay must be >= 0"),
    ("train.lr=.inf", "train.lr must be a finite number; got inf"),
    ("train.lr=1e400", "train.lr must be a finite number; got inf"),
])
def test_cli_refuses_bad_values_in_one_line(capsys, monkeypatch, override, words):
    assert words in cli_train(capsys, monkeypatch, TOY, override)


# ---------------------------------------------------------------------------------------------
# output_dir

def test_output_dir_under_a_file_is_refused_before_any_load(tmp_path, no_heavy_loads):
    no_heavy_loads()
    (tmp_path / "afile").write_text("x")
    message = one_line(trainer, toy(tmp_path, f"output_dir={tmp_path / 'afile' / 'run'}"))
    assert message.startswith(f"config: output_dir '{tmp_path / 'afile' / 'run'}' cannot be created"), message
    assert f"{tmp_path / 'afile'} is a file" in message
    assert "is a file; choose a folder" in one_line(check_output_dir, str(tmp_path / "afile"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_unwritable_output_dir_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert "not writable" in one_line(check_output_dir, str(locked))
        assert "cannot be created" in one_line(check_output_dir, str(locked / "run"))
    finally:
        locked.chmod(0o700)


def test_output_dir_that_takes_no_file_is_refused(tmp_path, monkeypatch):
    """The write probe's failure (as a non-root user gets in a read-only folder; root writes anywhere)."""
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert one_line(check_output_dir, str(tmp_path)) == (f"config: output_dir '{tmp_path}' is not writable "
                                                         "(Permission denied); choose a writable folder")


def test_output_dir_is_created_and_left_clean(tmp_path):
    check_output_dir(str(tmp_path / "a" / "b"))
    assert os.listdir(tmp_path / "a" / "b") == []  # the write probe is removed


# ---------------------------------------------------------------------------------------------
# paths and names before any model loads

def test_reward_model_path_is_checked_before_the_dit_loads(tmp_path, no_heavy_loads):
    no_heavy_loads()
    rewards = "rewards=[{name: clip_score, options: {path: /no/such/clip-vit-large-patch14}}]"
    config = toy(tmp_path, rewards, paths=False)  # as a cluster config checked elsewhere
    message = one_line(trainer, config)
    assert message == ("config: rewards[0] (clip_score): options.path '/no/such/clip-vit-large-patch14' does not "
                       "exist; give the reward model's local file or folder")
    assert message == one_line(toy, tmp_path, rewards)  # and at load time, with the other paths


def test_every_reward_path_option_is_checked(tmp_path):
    (tmp_path / "hps.pt").write_bytes(b"")
    rewards = (f"rewards=[{{name: hps_v2.1, options: {{path: {tmp_path / 'hps.pt'}, "
               "clip_path: /no/such/CLIP-ViT-H-14}}]")
    assert "options.clip_path '/no/such/CLIP-ViT-H-14' does not exist" in one_line(toy, tmp_path, rewards)


def test_unknown_reward_name_is_reported_before_the_dit_loads(tmp_path, no_heavy_loads):
    no_heavy_loads()
    message = one_line(trainer, toy(tmp_path, "rewards=[{name: videoalign_xq}]"))
    assert message.startswith("config: rewards[0].name: unknown reward 'videoalign_xq'; known rewards:"), message
    message = one_line(trainer, toy(tmp_path, "guidance.process_reward=toy_latnt", "guidance.scale=1.0"))
    assert "guidance.process_reward: unknown process reward 'toy_latnt'" in message


def test_eval_prompts_beyond_the_toy_world_names_both_numbers(tmp_path, no_heavy_loads):
    message = one_line(trainer, toy(tmp_path, "data.eval_prompts=1000"))
    assert message == ("config: data.eval_prompts=1000 but the toy world has 14 held-out prompts; set "
                       "data.eval_prompts <= 14")
    from dancegrpo_hpc.data.toy_world import ToyWorldAdapter

    assert len(ToyWorldAdapter(toy(tmp_path, "data.eval_prompts=14")).eval_prompts) == 14  # all of them is fine


def test_eval_prompts_beyond_a_prompt_file_names_both_numbers(tmp_path):
    from dancegrpo_hpc.data.real_world import PromptWorld
    from dancegrpo_hpc.models.hunyuan_video.config import preset

    (tmp_path / "dit").mkdir()
    (tmp_path / "dit" / "config.json").write_text(json.dumps(preset("tiny").to_diffusers()))
    (tmp_path / "prompts.txt").write_text("".join(f"prompt {i}\n" for i in range(14)) + "prompt 0\n")  # 14 unique
    (tmp_path / "vae").mkdir()

    def world(eval_prompts):
        config = config_from_dict({
            "output_dir": str(tmp_path / "run"), "model": {"preset": "tiny", "path": str(tmp_path / "dit")},
            "data": {"source": "prompts", "prompts": str(tmp_path / "prompts.txt"), "vae": str(tmp_path / "vae"),
                     "embeddings": str(tmp_path / "cache"), "frames": 5, "height": 32, "width": 32,
                     "eval_prompts": eval_prompts}}, paths=False)
        return PromptWorld(config)

    assert one_line(world, 1000) == ("config: data.eval_prompts=1000 leaves no prompt to train on: data.prompts "
                                     "has 14 prompts (after deduplication); set data.eval_prompts <= 13")
    assert "data.eval_prompts=14 leaves no prompt" in one_line(world, 14)
    assert "data.vae" in one_line(world, 13)  # 13 passes: the next check is the VAE folder's config.json


# ---------------------------------------------------------------------------------------------
# the memory check

def test_memory_check_reports_the_estimate_and_what_is_available(tmp_path):
    config = toy(tmp_path, "rollout.group_size=4096")  # 32,768 samples an iteration on one rank
    estimate = estimate_memory(config, 1)
    assert estimate["total"] > 100 * GIB
    message = one_line(check_memory, config, 1, "cpu", available=(8 * GIB, "available RAM on this machine"))
    assert message.startswith(f"memory: the run needs at least {estimate['total'] / GIB:.2f} GiB per rank by the "
                              "estimate (largest term: activations"), message
    assert "available RAM on this machine is 8.00 GiB" in message and "--no-memory-check" in message
    assert "train.micro_batch" in message  # the advice for the largest term
    # the toy example itself fits in 8 GiB; two CPU ranks of this machine share its RAM
    small = toy(tmp_path)
    assert check_memory(small, 1, "cpu", available=(8 * GIB, "RAM"))["total"] == estimate_memory(small, 1)["total"]
    need = estimate_memory(small, 1)["total"]
    check_memory(small, 1, "cpu", local_ranks=2, available=(2 * need, "RAM"))
    assert f"for 3 ranks on this machine" in one_line(check_memory, small, 1, "cpu", local_ranks=3,
                                                      available=(2 * need, "RAM"))


def test_memory_check_on_a_gpu_compares_device_memory_only(tmp_path):
    config = toy(tmp_path, "rollout.buffer_device=cpu", "rollout.group_size=256")
    estimate = estimate_memory(config, 1)
    assert estimate["host_pinned"] > 0
    check_memory(config, 1, "cuda:0", available=(estimate["total"], "free memory on GPU 0"))  # the pinned buffer is host's
    message = one_line(check_memory, config, 1, "cuda:0", available=(estimate["total"] - 1, "free memory on GPU 0"))
    assert "per rank" in message and "free memory on GPU 0 is" in message


def test_memory_check_runs_before_any_load(tmp_path, no_heavy_loads, capsys, monkeypatch):
    no_heavy_loads()
    config = toy(tmp_path, *HUGE)
    message = one_line(trainer, config)  # this machine's real available RAM
    assert message.startswith("memory: the run needs at least"), message
    assert estimate_memory(config, 1)["total"] > 1000 * GIB
    line = cli_train(capsys, monkeypatch, TOY, f"output_dir={tmp_path / 'cli'}", *HUGE)
    assert "error: memory: the run needs at least" in line


def test_no_memory_check_skips_it(tmp_path, no_heavy_loads, capsys, monkeypatch):
    no_heavy_loads()
    with pytest.raises(AssertionError, match="the world .* loaded before"):  # got past the check to the loads
        trainer(toy(tmp_path, *HUGE), check_memory=False)
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")
    with pytest.raises(AssertionError, match="the world .* loaded before"):
        cli_main(["train", TOY, f"output_dir={tmp_path / 'cli'}", *HUGE, "--no-memory-check"])


# ---------------------------------------------------------------------------------------------
# what a run reports when rewards fail

def _fails(videos, prompts):
    raise RuntimeError("reward server unreachable")


def _nan_on_first_held_out(videos, prompts):
    return torch.tensor([float("nan") if p == "held out 0" else 1.0 for p in prompts])


@pytest.fixture
def failing_rewards():
    from dancegrpo_hpc.rewards import register_reward, unregister_reward
    from dancegrpo_hpc.rewards.registry import function_reward_factory

    names = {"test_always_fails": _fails, "test_nan_on_held_out_0": _nan_on_first_held_out}
    for name, fn in names.items():
        register_reward(name, function_reward_factory(name, fn), replace=True)
    yield
    for name in names:
        unregister_reward(name)


def test_evaluation_excludes_and_reports_failed_samples(tmp_path, failing_rewards):
    from trainer_utils import TinyWorld, tiny_config

    config = tiny_config(tmp_path, rewards=[{"name": "test_nan_on_held_out_0"}])
    t = trainer(config, world=TinyWorld(eval_prompts=2))
    try:
        out, _ = t.evaluate()
    finally:
        t.close()
    # 2 prompts x 2 samples; "held out 0" scores NaN (failed), "held out 1" scores 1.0
    assert out["reward"] == 1.0 and out["reward_test_nan_on_held_out_0"] == 1.0  # not 0.5 (NaN as 0), not NaN
    assert (out["samples"], out["failed"]) == (2, 2)
    assert out["failed_by_reward"] == {"test_nan_on_held_out_0": 2}
    assert "non-finite score" in out["first_error"]


def test_a_run_whose_rewards_all_fail_reports_no_number(tmp_path, failing_rewards, capsys):
    from trainer_utils import TinyWorld, tiny_config

    config = tiny_config(tmp_path, rewards=[{"name": "test_always_fails"}], train={"iterations": 1})
    t = trainer(config, world=TinyWorld(eval_prompts=2))
    try:
        summary = t.train()
    finally:
        t.close()
    printed = capsys.readouterr().out
    assert ("[eval] before training: held-out reward none (no valid samples); 4 of 4 held-out samples failed "
            "(test_always_fails: 4), first error: test_always_fails: samples [0, 1]: RuntimeError: reward server "
            "unreachable") in printed, printed
    assert "[eval] after training: held-out reward none (no valid samples); 4 of 4" in printed
    assert "reward none (no valid samples) -> none (no valid samples) (relative change n/a)" in printed
    assert summary["reward_before"] is None and summary["reward_after"] is None
    saved = strict_json((tmp_path / "summary.json").read_text())
    assert saved["reward_before"] is None and saved["reward_after"] is None  # was 0.0
    assert saved["eval_before"]["failed"] == 4 and saved["eval_before"]["samples"] == 0
    # every group dropped: reward_mean and loss are NaN in memory, null on disk
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    record = strict_json(lines[0])
    assert record["reward_mean"] is None and record["loss"] is None and record["dropped_groups"] == 4
    assert read_metrics(tmp_path)[0]["reward_mean"] is None  # the repo's reader takes it


def _nan_on_second_held_out(videos, prompts):
    return torch.tensor([float("nan") if p == "held out 1" else 1.0 for p in prompts])


def _dp_evaluate(rank, world_size, output_dir):
    from trainer_utils import TinyWorld, tiny_config

    from dancegrpo_hpc.rewards import register_reward
    from dancegrpo_hpc.rewards.registry import function_reward_factory

    register_reward("test_nan_on_held_out_1", function_reward_factory("test_nan_on_held_out_1",
                                                                      _nan_on_second_held_out), replace=True)
    t = trainer(tiny_config(output_dir, rewards=[{"name": "test_nan_on_held_out_1"}]), world=TinyWorld(eval_prompts=2))
    try:
        return t.evaluate()[0]
    finally:
        t.close()


@pytest.mark.distributed
def test_evaluation_failures_are_counted_and_reported_across_data_parallel_ranks(tmp_path):
    """Rank 0 evaluates "held out 0" (all fine), rank 1 "held out 1" (all NaN): both ranks report
    the global counts and rank 1's first error line."""
    from dist_utils import run_ranks

    for out in run_ranks(2, _dp_evaluate, str(tmp_path)):
        assert out["reward"] == 1.0 and (out["samples"], out["failed"]) == (2, 2)
        assert out["failed_by_reward"] == {"test_nan_on_held_out_1": 2}
        assert out["first_error"].startswith("test_nan_on_held_out_1: samples [0, 1]: non-finite score")


# ---------------------------------------------------------------------------------------------
# strict JSON files

def test_metrics_jsonl_writes_null_for_non_finite_numbers(tmp_path):
    with MetricsLog(tmp_path, tensorboard=False) as log:
        record = log.log(1, {"reward_mean": float("nan"), "loss": float("inf"), "grad_norm": 0.5,
                             "rewards": {"hps": float("-inf")}, "per_step": [1.0, float("nan")]})
    assert record == {"iteration": 1, "reward_mean": None, "loss": None, "grad_norm": 0.5, "rewards": {"hps": None},
                      "per_step": [1.0, None]}
    assert strict_json((tmp_path / "metrics.jsonl").read_text()) == record
    with MetricsLog(tmp_path, tensorboard=False, resume_iteration=1) as log:  # resume reads nulls back
        log.log(2, {"reward_mean": 0.25})
    assert [r["reward_mean"] for r in read_metrics(tmp_path)] == [None, 0.25]


def test_summary_json_is_strict_and_its_line_says_no_number(tmp_path):
    summary = {"reward_before": None, "reward_after": float("nan"), "iterations": 3, "wall_s": 5.0}
    path = write_summary(tmp_path, summary)
    assert strict_json(path.read_text()) == {"reward_before": None, "reward_after": None, "iterations": 3,
                                             "wall_s": 5.0}
    assert format_summary_line({**summary, "reward_after": 0.5}) == \
        "reward none (no valid samples) -> 0.5000 (relative change n/a) in 3 iterations, 5s"
