"""Checkpoints: round trips, RNG restore, crash leftovers, SIGKILL during saves,
pruning, resume resolution and a 2-rank gloo save/load."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from dist_utils import run_ranks

from dancegrpo_hpc.checkpoint import (
    TrainerState, capture_rng_state, check_rank_files, checkpoints_dir, choose_checkpoint, find_latest, has_checksums,
    is_complete, load_checkpoint, resolve_resume, restore_rng_state, resume_candidates, save_checkpoint,
)
from dancegrpo_hpc.checkpoint import manifest
from dancegrpo_hpc.checks import InputError

LAYOUT = {"tp": 1, "ulysses": 1, "sequence_parallel": False}
REPO = Path(__file__).resolve().parents[1]


def _trainer_state(iteration, world_size=1, layout=LAYOUT):
    return TrainerState(iteration=iteration, world_size=world_size, layout=layout,
                        data_position={"epoch": 1, "index": 7 * iteration}, scheduler={"last_epoch": iteration},
                        metrics_history=[{"iteration": i, "reward_mean": 0.1 * i} for i in range(1, iteration + 1)],
                        config={"lr": 1e-5, "model": {"preset": "tiny"}})


def _optimizer_state():
    param = torch.nn.Parameter(torch.randn(5, 3))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    param.grad = torch.randn(5, 3)
    optimizer.step()
    return optimizer.state_dict()


def _save(out, iteration, model_state=None, keep_last=2, **kwargs):
    model_state = model_state if model_state is not None else {"w": torch.full((4, 4), float(iteration))}
    return save_checkpoint(out, iteration, rank=0, world_size=1, model_state=model_state, writes_model=True,
                           shard_tag="tp0", optimizer_state={"step": torch.tensor(iteration)},
                           trainer_state=_trainer_state(iteration), keep_last=keep_last, **kwargs)


def _load(path):
    return load_checkpoint(path, rank=0, shard_tag="tp0", world_size=1, layout=LAYOUT)


def test_round_trip_keeps_model_ema_optimizer_and_trainer_state(tmp_path):
    base = torch.randn(6, 8, dtype=torch.bfloat16)
    model_state = {"weight": base, "tied": base, "transposed": base.t(), "row": base[2], "half": torch.randn(3).half()}
    optimizer_state = _optimizer_state()
    ema_state = {"weight": base.float() * 0.5}
    path = save_checkpoint(tmp_path, 12, rank=0, world_size=1, model_state=model_state, writes_model=True,
                           shard_tag="tp0", optimizer_state=optimizer_state, trainer_state=_trainer_state(12),
                           ema_state=ema_state)
    assert path == checkpoints_dir(tmp_path) / "iter_0000012" and is_complete(path)
    assert (checkpoints_dir(tmp_path) / "latest").read_text().strip() == "iter_0000012"
    assert find_latest(tmp_path) == path

    loaded = _load(path)
    assert set(loaded.model_state) == set(model_state)
    for name, tensor in model_state.items():
        assert loaded.model_state[name].dtype == tensor.dtype and torch.equal(loaded.model_state[name], tensor)
    assert torch.equal(loaded.ema_state["weight"], ema_state["weight"])
    saved_param_state, loaded_param_state = optimizer_state["state"][0], loaded.optimizer_state["state"][0]
    assert all(torch.equal(loaded_param_state[k], v) for k, v in saved_param_state.items())
    assert loaded.optimizer_state["param_groups"] == optimizer_state["param_groups"]
    assert loaded.trainer_state == _trainer_state(12)


def _draws():
    return torch.rand(4), [random.random() for _ in range(4)], np.random.rand(4)


def _assert_same_draws(a, b):
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and np.array_equal(a[2], b[2])


def test_restored_rng_state_reproduces_the_next_draws():
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    torch.randn(1), np.random.randn(1)  # numpy now holds a cached gaussian, which must survive too
    state = capture_rng_state()
    expected = _draws()
    restore_rng_state(state)
    _assert_same_draws(_draws(), expected)


def test_rng_state_survives_a_checkpoint_round_trip(tmp_path):
    torch.manual_seed(11), random.seed(11), np.random.seed(11)
    path = _save(tmp_path, 1)
    expected = _draws()
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    restore_rng_state(_load(path).rng_state)
    _assert_same_draws(_draws(), expected)


def test_crash_leftovers_are_ignored_and_the_next_save_succeeds(tmp_path):
    previous = _save(tmp_path, 1)
    root = checkpoints_dir(tmp_path)
    stale = root / "iter_0000002.tmp"  # a save killed before rank 0 published it
    stale.mkdir()
    (stale / "model_tp0.safetensors").write_bytes(b"\x00" * 10)
    (stale / "optim_rank0.pt.tmp").write_bytes(b"half")
    unmarked = root / "iter_0000003"  # a complete-looking name without the COMPLETE marker
    unmarked.mkdir()
    assert find_latest(tmp_path) == previous
    (root / "latest").write_text("iter_0000003\n")  # even a pointer at it falls back
    assert find_latest(tmp_path) == previous

    path = _save(tmp_path, 2)
    assert find_latest(tmp_path) == path and not stale.exists()
    assert torch.equal(_load(path).model_state["w"], torch.full((4, 4), 2.0))


def test_a_crash_while_replacing_a_checkpoint_keeps_the_old_copy_findable(tmp_path):
    path = _save(tmp_path, 4)
    replaced_copy = path.with_name(path.name + ".old")
    os.replace(path, replaced_copy)  # the moment between moving the old copy aside and renaming the new one
    assert find_latest(tmp_path) == replaced_copy
    assert _load(replaced_copy).trainer_state.iteration == 4
    assert _save(tmp_path, 4) == path and not replaced_copy.exists()
    assert find_latest(tmp_path) == path


_SAVE_FOREVER = """
import os, sys, time
import torch
from dancegrpo_hpc.checkpoint import TrainerState, find_latest, read_trainer_state, save_checkpoint

real_fsync = os.fsync
def slow_fsync(fd):  # widen every window between writes so kills land mid-save
    time.sleep(0.01)
    real_fsync(fd)
os.fsync = slow_fsync

out = sys.argv[1]
latest = find_latest(out)
start = read_trainer_state(latest).iteration + 1 if latest else 1
print("ready", flush=True)
layout = {"tp": 1}
for iteration in range(start, start + 10000):
    save_checkpoint(out, iteration, rank=0, world_size=1, model_state={"w": torch.full((256, 1024), float(iteration))},
                    writes_model=True, shard_tag="tp0", optimizer_state={"step": torch.tensor(iteration)},
                    trainer_state=TrainerState(iteration, 1, layout), keep_last=2)
"""


@pytest.mark.slow
def test_sigkill_during_saves_never_leaves_latest_on_an_incomplete_checkpoint(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    rng = random.Random(0)
    seen_iterations = []
    for _ in range(6):
        child = subprocess.Popen([sys.executable, "-c", _SAVE_FOREVER, str(tmp_path)], stdout=subprocess.PIPE,
                                 env=env, cwd=REPO)
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.8))
        child.send_signal(signal.SIGKILL)
        child.wait()
        pointer = checkpoints_dir(tmp_path) / "latest"
        if pointer.exists():
            assert is_complete(checkpoints_dir(tmp_path) / pointer.read_text().strip())
        latest = find_latest(tmp_path)
        if latest is None:  # killed before its first save finished
            continue
        loaded = load_checkpoint(latest, rank=0, shard_tag="tp0", world_size=1, layout={"tp": 1})
        iteration = loaded.trainer_state.iteration
        assert latest.name == f"iter_{iteration:07d}"
        assert torch.equal(loaded.model_state["w"], torch.full((256, 1024), float(iteration)))
        assert int(loaded.optimizer_state["step"]) == iteration
        seen_iterations.append(iteration)
    assert seen_iterations and seen_iterations == sorted(seen_iterations)  # resumed runs move forward


def _iteration_dirs(out):
    return sorted(p.name for p in checkpoints_dir(out).iterdir() if p.is_dir())


def test_keep_last_prunes_older_checkpoints(tmp_path):
    for iteration in range(1, 6):
        _save(tmp_path, iteration, keep_last=2)
    assert _iteration_dirs(tmp_path) == ["iter_0000004", "iter_0000005"]
    _save(tmp_path, 6, keep_last=None)
    assert _iteration_dirs(tmp_path) == ["iter_0000004", "iter_0000005", "iter_0000006"]


def test_resaving_an_earlier_iteration_replaces_it_and_leaves_newer_ones(tmp_path):
    for iteration in (1, 2, 3):
        _save(tmp_path, iteration, keep_last=None)
    path = _save(tmp_path, 2, model_state={"w": torch.zeros(2)}, keep_last=1)  # a run resumed from iteration 1
    assert _iteration_dirs(tmp_path) == ["iter_0000002", "iter_0000003"]
    assert find_latest(tmp_path) == path
    assert torch.equal(_load(path).model_state["w"], torch.zeros(2))


def test_resolve_resume(tmp_path):
    assert resolve_resume("auto", tmp_path) is None
    first = _save(tmp_path, 1)
    second = _save(tmp_path, 2)
    assert resolve_resume("auto", tmp_path) == second
    assert resolve_resume("AUTO", str(tmp_path)) == second
    for fresh in ("none", "", None):
        assert resolve_resume(fresh, tmp_path) is None
    assert resolve_resume(str(first), tmp_path) == first
    with pytest.raises(InputError, match="does not exist"):
        resolve_resume(str(tmp_path / "missing"), tmp_path)
    incomplete = checkpoints_dir(tmp_path) / "iter_0000003.tmp"
    incomplete.mkdir()
    with pytest.raises(InputError, match="COMPLETE"):
        resolve_resume(str(incomplete), tmp_path)


def test_bad_arguments_raise_input_errors(tmp_path):
    with pytest.raises(InputError, match="keep_last"):
        _save(tmp_path, 1, keep_last=0)
    with pytest.raises(InputError, match="shard_tag"):
        save_checkpoint(tmp_path, 1, rank=0, world_size=1, model_state={}, writes_model=True, shard_tag="tp/0",
                        optimizer_state={}, trainer_state=_trainer_state(1))
    with pytest.raises(InputError, match="trainer_state says iteration=2"):
        save_checkpoint(tmp_path, 1, rank=0, world_size=1, model_state={}, writes_model=True, shard_tag="tp0",
                        optimizer_state={}, trainer_state=_trainer_state(2))
    bad_config = _trainer_state(1)
    bad_config.config = {"dtype": torch.float32}
    with pytest.raises(InputError, match="config must be JSON-serialisable"):
        save_checkpoint(tmp_path, 1, rank=0, world_size=1, model_state={}, writes_model=True, shard_tag="tp0",
                        optimizer_state={}, trainer_state=bad_config)
    path = _save(tmp_path, 1)
    with pytest.raises(InputError, match="model_tp1.safetensors.*saved: model_tp0.safetensors"):
        load_checkpoint(path, rank=0, shard_tag="tp1", world_size=1, layout=LAYOUT)


def _two_rank_save_and_load(rank, world_size, out):
    import torch.distributed as dist

    dist.init_process_group("gloo")
    layout = {"tp": 1, "ulysses": 1, "dp": 2}
    torch.manual_seed(100 + rank)
    # data parallel: both ranks hold the same model shard, only rank 0 writes it
    model_state = {"w": torch.full((3,), 1.0 + rank)}
    optimizer_state = {"state": {0: {"exp_avg": torch.full((2,), float(rank))}}, "param_groups": [{"lr": 0.1}]}
    path = save_checkpoint(out, 5, rank=rank, world_size=world_size, model_state=model_state,
                           writes_model=rank == 0, shard_tag="tp0", optimizer_state=optimizer_state,
                           trainer_state=TrainerState(5, world_size, layout) if rank == 0 else None)
    expected_draw = torch.rand(3)
    files = sorted(os.listdir(path))

    torch.manual_seed(0)
    loaded = load_checkpoint(path, rank=rank, shard_tag="tp0", world_size=world_size, layout=layout)
    restore_rng_state(loaded.rng_state)
    same_draw = torch.equal(torch.rand(3), expected_draw)
    errors = []
    for kwargs in ({"world_size": 1, "layout": layout}, {"world_size": 2, "layout": {**layout, "tp": 2, "dp": 1}}):
        try:
            load_checkpoint(path, rank=rank, shard_tag="tp0", **kwargs)
        except InputError as error:
            errors.append(str(error))
    return files, loaded.model_state["w"], loaded.optimizer_state["state"][0]["exp_avg"], same_draw, errors


@pytest.mark.distributed
def test_two_ranks_save_and_load_their_own_optimizer_and_rng_state(tmp_path):
    results = run_ranks(2, _two_rank_save_and_load, str(tmp_path))
    for rank, (files, model, exp_avg, same_draw, errors) in enumerate(results):
        assert files == ["COMPLETE", "manifest.json", "model_tp0.safetensors", "optim_rank0.pt", "optim_rank1.pt",
                         "rng_rank0.pt", "rng_rank1.pt", "trainer_state.json"]
        assert torch.equal(model, torch.full((3,), 1.0))  # rank 0's copy, for both ranks
        assert torch.equal(exp_avg, torch.full((2,), float(rank)))
        assert same_draw
        assert "world_size=2 but this run has world_size=1" in errors[0]
        assert "differs in dp, tp" in errors[1] and "saved dp=2, tp=1" in errors[1]
    state = json.loads((checkpoints_dir(tmp_path) / "iter_0000005" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["layout"]["dp"] == 2


# -- checksums (manifest.json) and choosing an intact checkpoint -------------------------------

def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_manifest_records_size_and_chunked_sha256_of_every_file(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest, "CHUNK_BYTES", 1000)  # several chunks even for these small files
    path = _save(tmp_path, 3, ema_state={"w": torch.ones(300)})
    listed = json.loads((path / "manifest.json").read_text())["files"]
    on_disk = sorted(p.name for p in path.iterdir() if p.name not in ("COMPLETE", "manifest.json"))
    assert sorted(listed) == on_disk == ["ema_tp0.safetensors", "model_tp0.safetensors", "optim_rank0.pt",
                                         "rng_rank0.pt", "trainer_state.json"]
    for name, entry in listed.items():
        data = (path / name).read_bytes()
        chunks = b"".join(_sha256(data[i:i + 1000]) for i in range(0, len(data), 1000))
        assert entry == {"size": len(data), "sha256": hashlib.sha256(chunks).hexdigest()}, name
    assert len((path / "rng_rank0.pt").read_bytes()) > 3000  # really several chunks
    assert manifest.file_digest(path / "rng_rank0.pt", threads=3) == listed["rng_rank0.pt"]["sha256"]
    pinned = hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest()
    assert (path / "COMPLETE").read_text() == f"3\nmanifest sha256 {pinned}\n"
    assert not list(path.glob("manifest_rank*"))  # the per-rank parts were merged


def _check(path, **kwargs):
    return check_rank_files(path, rank=0, shard_tag="tp0", world_size=1, layout=LAYOUT, **kwargs)


def _flip_bytes(path, count, start=0):
    data = bytearray(path.read_bytes())
    for i in random.Random(0).sample(range(start, len(data)), count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_check_finds_each_kind_of_damage(tmp_path):
    path = _save(tmp_path, 1, model_state={"w": torch.randn(64, 64)})
    assert _check(path) is None
    model = path / "model_tp0.safetensors"
    good = model.read_bytes()
    _flip_bytes(model, 1, start=len(good) - 4 * 64 * 64)  # one byte inside the weights
    assert _check(path) == ("corrupt", "model_tp0.safetensors is corrupt (its content differs from the sha256 "
                                       "recorded at save time)")
    model.write_bytes(good[:100])
    assert _check(path) == ("corrupt", f"model_tp0.safetensors is truncated (100 of {len(good)} bytes)")
    model.write_bytes(good + b"x")
    assert _check(path) == ("corrupt", f"model_tp0.safetensors has {len(good) + 1} bytes, {len(good)} were saved")
    model.unlink()
    assert _check(path) == ("corrupt", "model_tp0.safetensors is missing")
    model.write_bytes(good)
    (path / "manifest.json").write_text((path / "manifest.json").read_text().replace("size", "sizE"))
    assert _check(path) == ("corrupt", "manifest.json is corrupt (its sha256 differs from the one in COMPLETE)")
    (path / "manifest.json").unlink()  # deleting it does not turn the checkpoint into an unverified one
    assert _check(path) == ("corrupt", "manifest.json is missing")


def _strip_manifest(path):
    """What a checkpoint saved before checksums looks like."""
    (path / "manifest.json").unlink()
    (path / "COMPLETE").write_text((path / "COMPLETE").read_text().splitlines()[0] + "\n")


def test_a_checkpoint_without_manifest_is_checked_by_loading_its_files(tmp_path):
    path = _save(tmp_path, 1)
    _strip_manifest(path)
    assert not has_checksums(path) and _check(path) is None
    assert torch.equal(_load(path).model_state["w"], torch.full((4, 4), 1.0))
    optim = path / "optim_rank0.pt"
    optim.write_bytes(optim.read_bytes()[:50])
    kind, why = _check(path)
    assert kind == "corrupt" and why.startswith("optim_rank0.pt is unreadable (")
    (path / "rng_rank0.pt").write_bytes(b"")
    optim.unlink()
    assert _check(path) == ("corrupt", "optim_rank0.pt is missing")


def test_resume_candidates_are_latest_then_older_ones(tmp_path):
    for iteration in (1, 2, 3):
        _save(tmp_path, iteration, keep_last=None)
    root = checkpoints_dir(tmp_path)
    assert [p.name for p in resume_candidates("auto", tmp_path)] == ["iter_0000003", "iter_0000002", "iter_0000001"]
    (root / "latest").write_text("iter_0000002\n")  # a run resumed from 2: iter_3 is an abandoned branch
    assert [p.name for p in resume_candidates("auto", tmp_path)] == ["iter_0000002", "iter_0000001"]
    (root / "latest").write_text("iter_0000009\n")
    assert [p.name for p in resume_candidates("auto", tmp_path)] == ["iter_0000003", "iter_0000002", "iter_0000001"]
    assert resume_candidates(str(root / "iter_0000001"), tmp_path) == [root / "iter_0000001"]
    assert resume_candidates("none", tmp_path) == []


def _choose(out, resume="auto", lines=None):
    return choose_checkpoint(resume, out, rank=0, shard_tag="tp0", world_size=1, layout=LAYOUT,
                             report=None if lines is None else lines.append)


def test_choose_falls_back_past_damaged_checkpoints_and_fails_in_one_line_when_none_is_intact(tmp_path):
    first, second = _save(tmp_path, 1), _save(tmp_path, 2)
    lines = []
    (second / "rng_rank0.pt").write_bytes(b"")
    assert _choose(tmp_path, lines=lines) == first
    assert lines == [f"[resume] skipping iter_0000002: rng_rank0.pt is truncated (0 of "
                     f"{(first / 'rng_rank0.pt').stat().st_size} bytes); falling back to an older checkpoint"]
    (first / "trainer_state.json").write_text("{")
    with pytest.raises(InputError) as error:
        _choose(tmp_path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"resume: no intact checkpoint in {checkpoints_dir(tmp_path)}: "
                                                      "iter_0000002: rng_rank0.pt is truncated")
    assert "iter_0000001: trainer_state.json is truncated" in message and message.endswith("--resume none")
    with pytest.raises(InputError, match=r"^resume: checkpoint .*iter_0000002: rng_rank0.pt is truncated.*--resume auto$"):
        _choose(tmp_path, resume=str(second))
    assert _choose(tmp_path / "fresh") is None


def test_a_layout_change_is_refused_not_taken_for_damage(tmp_path):
    _save(tmp_path, 1), _save(tmp_path, 2)
    with pytest.raises(InputError, match="world_size=1 but this run has world_size=2"):
        choose_checkpoint("auto", tmp_path, rank=0, shard_tag="tp0", world_size=2, layout=LAYOUT)


def _two_ranks_choose(rank, world_size, out):
    import torch.distributed as dist

    dist.init_process_group("gloo")
    layout = {"tp": 1, "ulysses": 1, "dp": 2}
    for iteration in (1, 2):
        save_checkpoint(out, iteration, rank=rank, world_size=world_size, model_state={"w": torch.ones(3)},
                        writes_model=rank == 0, shard_tag="tp0", optimizer_state={"step": torch.tensor(iteration)},
                        trainer_state=TrainerState(iteration, world_size, layout) if rank == 0 else None)
    optim = checkpoints_dir(out) / "iter_0000002" / "optim_rank1.pt"
    saved_size = optim.stat().st_size
    dist.barrier()
    if rank == 1:  # only rank 1 reads this file: rank 0 alone would resume from iter_2
        optim.write_bytes(optim.read_bytes()[:10])
    dist.barrier()
    own_view = check_rank_files(checkpoints_dir(out) / "iter_0000002", rank=rank, shard_tag="tp0",
                                world_size=world_size, layout=layout)
    lines = []
    chosen = choose_checkpoint("auto", out, rank=rank, shard_tag="tp0", world_size=world_size, layout=layout,
                               report=lines.append if rank == 0 else None)
    return own_view, chosen.name, lines, saved_size


@pytest.mark.distributed
def test_ranks_agree_on_the_checkpoint_when_only_one_rank_sees_damage(tmp_path):
    (view0, chosen0, lines, size), (view1, chosen1, _, _) = run_ranks(2, _two_ranks_choose, str(tmp_path))
    why = f"optim_rank1.pt is truncated (10 of {size} bytes)"
    assert view0 is None and view1 == ("corrupt", why)
    assert chosen0 == chosen1 == "iter_0000001"
    assert lines == [f"[resume] skipping iter_0000002: {why} (rank 1); falling back to an older checkpoint"]
