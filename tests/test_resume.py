"""Resume of the trainer: a damaged latest checkpoint falls back to the previous one
with one line and the run then continues exactly as an uninterrupted one; no intact
checkpoint is one line; a config change that breaks the exact resume is refused
unless allowed, and an allowed lr change takes effect."""

import io
import json
import random
import shutil

import pytest
import torch
from safetensors.torch import load_file
from dist_utils import run_ranks
from trainer_utils import TinyWorld, tiny_config

from dancegrpo_hpc import train as train_cli
from dancegrpo_hpc.checkpoint import check_config_changes
from dancegrpo_hpc.checks import InputError
from dancegrpo_hpc.rl.trainer import Trainer

COMPARED = ("reward_mean", "loss", "reward_test_brightness", "reward_test_contrast", "grad_norm", "clip_fraction", "lr")
ITER_1, ITER_2 = "checkpoints/iter_0000001", "checkpoints/iter_0000002"


def _metrics(out):
    return [json.loads(line) for line in open(out / "metrics.jsonl")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 2-iteration run, checkpoints after iterations 1 and 2."""
    out = tmp_path_factory.mktemp("reference")
    trainer = Trainer(tiny_config(out), world=TinyWorld())
    try:
        trainer.train()
    finally:
        trainer.close()
    return out


def _copy(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    return out


def _resume(out, resume="auto", allow=(), **sections):
    trainer = Trainer(tiny_config(out, **sections), resume=resume, world=TinyWorld(), allow_changes=allow)
    try:
        trainer.train()
        return trainer
    finally:
        trainer.close()


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _break_json(path):
    path.write_text(path.read_text().replace("{", "[", 1))  # same size, no longer JSON


def _flip_1000_weight_bytes(path):
    """1000 bytes inside the tensor data (after the safetensors header): every
    loader reads the file without complaint."""
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    for i in random.Random(0).sample(range(header, len(data)), 1000):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    load_file(str(path))  # still loads: only the checksum can tell


DAMAGE = {
    "truncated model": ("model_tp0.safetensors", _truncate, "is truncated"),
    "truncated optimizer": ("optim_rank0.pt", _truncate, "is truncated"),
    "broken trainer_state.json": ("trainer_state.json", _break_json, "is corrupt"),
    "empty RNG file": ("rng_rank0.pt", lambda p: p.write_bytes(b""), "is truncated (0 of"),
    "1000 flipped bytes in the weights": ("model_tp0.safetensors", _flip_1000_weight_bytes, "is corrupt"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_latest_checkpoint_falls_back_and_continues_as_the_uninterrupted_run(reference, tmp_path, capsys,
                                                                                       kind):
    name, damage, why = DAMAGE[kind]
    out = _copy(reference, tmp_path)
    damage(out / ITER_2 / name)
    capsys.readouterr()
    trainer = _resume(out)
    printed = capsys.readouterr().out.splitlines()
    skipped = [line for line in printed if "skipping" in line]
    assert len(skipped) == 1 and skipped[0].startswith(f"[resume] skipping iter_0000002: {name} {why}"), printed
    assert f"[resume] from {out / ITER_1} at iteration 1" in printed
    assert trainer.iteration == 2
    resumed, uninterrupted = _metrics(out), _metrics(reference)
    assert [m["iteration"] for m in resumed] == [1, 2]
    for key in COMPARED:
        assert resumed[1][key] == uninterrupted[1][key], (key, resumed[1][key], uninterrupted[1][key])
    summary, expected = (json.load(open(d / "summary.json")) for d in (out, reference))
    assert summary["reward_after"] == expected["reward_after"]
    # the damaged checkpoint was written again by the resumed run, with the uninterrupted run's weights
    saved, expected = (load_file(str(d / ITER_2 / "model_tp0.safetensors")) for d in (out, reference))
    assert saved.keys() == expected.keys() and all(torch.equal(saved[k], expected[k]) for k in expected)


def test_no_intact_checkpoint_is_one_line(reference, tmp_path, capsys):
    out = _copy(reference, tmp_path)
    _truncate(out / ITER_2 / "optim_rank0.pt")
    (out / ITER_1 / "rng_rank0.pt").write_bytes(b"")
    with pytest.raises(InputError) as error:
        Trainer(tiny_config(out), resume="auto", world=TinyWorld())
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"resume: no intact checkpoint in {out / 'checkpoints'}: iter_0000002: optim_rank0.pt "
                              "is truncated")
    assert "iter_0000001: rng_rank0.pt is truncated (0 of" in message and message.endswith("--resume none")
    # the command line reports it as one line too (exit 2), before any model is built
    code = train_cli.main([f"output_dir={out}", "--resume", "auto"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("dancegrpo-hpc train: error: resume: no intact checkpoint")


def _strip_manifest(path):
    (path / "manifest.json").unlink()
    (path / "COMPLETE").write_text((path / "COMPLETE").read_text().splitlines()[0] + "\n")


def test_checkpoint_saved_before_checksums_still_resumes(reference, tmp_path, capsys):
    out = _copy(reference, tmp_path)
    for path in (out / ITER_1, out / ITER_2):
        _strip_manifest(path)
    _truncate(out / ITER_2 / "optim_rank0.pt")  # without checksums a load error is the damage that can be seen
    capsys.readouterr()
    _resume(out)
    printed = capsys.readouterr().out
    assert "[resume] skipping iter_0000002: optim_rank0.pt is unreadable (" in printed
    assert "[resume] iter_0000001 predates checksums" in printed and f"[resume] from {out / ITER_1}" in printed
    assert _metrics(out)[1]["loss"] == _metrics(reference)[1]["loss"]


# -- config changes ---------------------------------------------------------------------------

def test_a_changed_config_is_refused_in_one_line_naming_keys_and_flag(reference, tmp_path):
    out = _copy(reference, tmp_path)
    changed = dict(seed=1, rollout={"group_size": 2}, sampling={"steps": 3}, train={"iterations": 3, "lr": 0.01})
    with pytest.raises(InputError) as error:
        Trainer(tiny_config(out, **changed), resume="auto", world=TinyWorld())
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("resume: the config differs from the checkpoint's in rollout.group_size (4 -> 2), "
                              "sampling.steps (4 -> 3), seed (0 -> 1), train.lr (0.001 -> 0.01); ")
    assert ("pass --allow-change rollout.group_size --allow-change sampling.steps --allow-change seed "
            "--allow-change train.lr to apply the change") in message
    assert "iterations" not in message  # free to change
    with pytest.raises(InputError, match="--allow-change trian.lr names no config key"):
        Trainer(tiny_config(out), resume="auto", world=TinyWorld(), allow_changes=["train.lr", "trian.lr"])


def test_config_comparison_rules():
    saved = {"seed": 0, "train": {"lr": 1e-3, "betas": [0.9, 0.999], "iterations": 5, "removed": 1},
             "parallel": {"tensor": 2}, "rewards": [{"name": "a", "weight": 1.0}]}
    current = {"seed": 0, "train": {"lr": 1e-3, "betas": (0.9, 0.999), "iterations": 9, "added": 2},
               "parallel": {"tensor": 1}, "rewards": [{"name": "a", "weight": 1.0}]}
    # tuples equal lists, keys one side lacks are not compared, parallel.* is the layout check's
    assert check_config_changes(saved, current) == ["train.iterations 5 -> 9"]
    changed = dict(current, seed=3, train=dict(current["train"], lr=0.01), rewards=[{"name": "b", "weight": 1.0}])
    with pytest.raises(InputError) as error:
        check_config_changes(saved, changed)
    assert ('in rewards ([{"name": "a", "weight": 1.0}] -> [{"name": "b", "weight": 1.0}]), seed (0 -> 3), '
            "train.lr (0.001 -> 0.01); ") in str(error.value)
    # a section allows its keys; flags may list several keys separated by commas
    assert check_config_changes(saved, changed, ["train", "seed,rewards"]) == [
        'rewards [{"name": "a", "weight": 1.0}] -> [{"name": "b", "weight": 1.0}]', "seed 0 -> 3",
        "train.iterations 5 -> 9", "train.lr 0.001 -> 0.01"]
    with pytest.raises(InputError, match="parallel layout cannot change on resume"):
        check_config_changes(saved, current, ["parallel.tensor"])


def test_allow_change_reaches_the_trainer_from_the_command_line(monkeypatch, tmp_path):
    seen = {}

    class Recorder:
        def __init__(self, config, **kwargs):
            seen.update(kwargs)

        def train(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr("dancegrpo_hpc.rl.trainer.Trainer", Recorder)
    args = ["--allow-change", "train.lr", f"output_dir={tmp_path}", "--resume", "auto", "--allow-change", "seed,rewards"]
    assert train_cli.main(args) == 0
    assert seen["allow_changes"] == ["train.lr", "seed,rewards"] and seen["resume"] == "auto"


def _step_from_iteration_1(reference, tmp_path, name, lr, allow=()):
    out = tmp_path / name
    shutil.copytree(reference, out)
    shutil.rmtree(out / ITER_2)
    trainer = Trainer(tiny_config(out, train={"lr": lr}), resume="auto", world=TinyWorld(), allow_changes=allow)
    try:
        trainer.load(trainer.resume_path)
        lrs = (trainer.optimizer.param_groups[0]["lr"], trainer.scheduler.get_last_lr()[0])
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainer.run_iteration(1)
        delta = {n: p.detach() - before[n] for n, p in trainer.model.named_parameters()}
    finally:
        trainer.close()
    return lrs, delta


def test_an_allowed_lr_change_takes_effect_in_the_next_step(reference, tmp_path):
    (lr_same, _), same = _step_from_iteration_1(reference, tmp_path, "same", 1e-3)
    (lr_new, last_lr), changed = _step_from_iteration_1(reference, tmp_path, "changed", 1e-2, allow=["train.lr"])
    assert lr_same == 1e-3 and lr_new == last_lr == 1e-2
    # AdamW's step (and its decoupled weight decay) is proportional to the lr: same gradients, 10x the update
    total_same = sum(float(d.abs().sum()) for d in same.values())
    assert total_same > 0
    for n in same:
        torch.testing.assert_close(changed[n], 10 * same[n], rtol=2e-3, atol=1e-7)


def test_bookkeeping_keys_change_freely_and_the_resume_stays_exact(reference, tmp_path, capsys):
    out = _copy(reference, tmp_path)
    shutil.rmtree(out / ITER_2)
    capsys.readouterr()
    _resume(out, checkpoint={"every": 2, "keep_last": 3}, logging={"progress": True}, eval={"every": 5})
    printed = capsys.readouterr().out
    assert ("[resume] config changes from iter_0000001: checkpoint.every 1 -> 2; checkpoint.keep_last 2 -> 3; "
            "eval.every 0 -> 5; logging.progress false -> true") in printed
    for key in COMPARED:
        assert _metrics(out)[1][key] == _metrics(reference)[1][key], key


def _zero_resume_third_step(rank, world_size):
    """Two ranks, ZeRO-1 AdamW with a 4-step lr warmup: 2 steps, a save, a third
    step; then a fresh optimizer resumed from the save (with and without
    apply_optimizer_settings) takes the third step: its lr, and whether it matches."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    return [_resume_third_step(apply_settings) for apply_settings in (True, False)]


def _resume_third_step(apply_settings):
    from dancegrpo_hpc.checkpoint import apply_optimizer_settings
    from dancegrpo_hpc.rl.optim import build_optimizer, local_optimizer, warmup_schedule

    settings = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    def build():
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(4, 3)) for _ in range(2)]  # one per rank's shard
        optimizer = build_optimizer(params, group=None, zero=True, **settings)
        return params, optimizer, warmup_schedule(optimizer, 4)

    def step(params, optimizer, scheduler, i):
        for k, p in enumerate(params):
            p.grad = torch.full_like(p, 0.1 * (i + 1 + k))
        optimizer.step()
        scheduler.step()

    params, optimizer, scheduler = build()
    for i in range(2):
        step(params, optimizer, scheduler, i)
    buffer = io.BytesIO()
    torch.save({"optimizer": local_optimizer(optimizer).state_dict(), "scheduler": scheduler.state_dict(),
                "params": [p.detach().clone() for p in params]}, buffer)
    step(params, optimizer, scheduler, 2)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed, optimizer, scheduler = build()
    with torch.no_grad():
        for p, value in zip(resumed, saved["params"]):
            p.copy_(value)
    local_optimizer(optimizer).load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if apply_settings:
        apply_optimizer_settings(optimizer, scheduler, local=local_optimizer(optimizer), **settings)
    lr = optimizer.param_groups[0]["lr"]
    step(resumed, optimizer, scheduler, 2)
    return lr, all(torch.equal(a, b) for a, b in zip(resumed, params))


@pytest.mark.distributed
def test_zero_resume_continues_the_warmup_lr_of_the_restored_step():
    """ZeRO's wrapper groups keep the lr of the schedule's first step and overwrite
    the restored inner groups at every step: the resume sets both (warmup factor
    min(1, (2 + 1) / 4) after two steps)."""
    for with_settings, without in run_ranks(2, _zero_resume_third_step):
        assert with_settings == (1e-3 * 0.75, True)
        assert without == (1e-3 * 0.25, False)  # the first step's lr: not the uninterrupted third step
