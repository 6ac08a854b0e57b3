"""Rewards on a separate pool of ranks: the pool's scores equal local scoring, the
training ranks' default group excludes the pool, failures come back as failed
samples, and a 3-rank torchrun (2 training + 1 reward rank) trains exactly as
2 training ranks scoring locally (this is also the suite's 2-rank torchrun test)."""

import json
import os
import sys

import pytest
import torch

from dist_utils import finish_job, run_ranks, start_job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, "examples", "toy_t2v.yaml")


def _brightness(videos, prompts):
    return videos.mean(dim=(1, 2, 3, 4))


def _fails_on_bad_prompts(videos, prompts):
    if any("bad" in p for p in prompts):
        raise ValueError("cannot score a bad prompt")
    return videos[:, 0].amax(dim=(1, 2, 3))


def _rewards():
    from dancegrpo_hpc.rewards import RewardSpec

    return [(RewardSpec("brightness", 1.0), _brightness), (RewardSpec("peak", 0.5), _fails_on_bad_prompts)]


def _batches(rank):
    gen = torch.Generator().manual_seed(rank)
    prompts = [["a", "b"], ["bad" if rank == 1 else "c", "d"], ["e", "f"]]
    return [(torch.rand(2, 3, 3, 4, 4, generator=gen), p, [10 * i, 10 * i + 1]) for i, p in enumerate(prompts)]


def _pool_rank(rank, world, reward_ranks):
    import torch.distributed as dist

    from dancegrpo_hpc.rewards import AsyncRewardRunner
    from dancegrpo_hpc.rewards.pool import RemoteRewardRunner, initialize, serve

    pool = initialize(reward_ranks)
    if pool.is_server:
        with AsyncRewardRunner(_rewards()) as runner:
            scored = serve(pool, runner)
        return {"scored": scored, "clients": pool.clients(), "default_group": dist.is_initialized()}
    remote = RemoteRewardRunner(pool, ["brightness", "peak"])
    for videos, prompts, ids in _batches(rank):  # all queued at once, as during a rollout
        remote.submit(videos, prompts, ids)
    got = remote.collect()
    again = remote.run_sync(torch.ones(1, 1, 3, 2, 2), ["g"])
    with AsyncRewardRunner(_rewards()) as local:
        for videos, prompts, ids in _batches(rank):
            local.submit(videos, prompts, ids)
        want = local.collect()
    remote.close()
    total = torch.ones(1)
    dist.all_reduce(total)  # training collectives run over the training ranks only
    return {"got": got, "want": want, "again": again, "train_world": dist.get_world_size(), "sum": total.item()}


@pytest.mark.distributed
def test_pool_scores_equal_local_scoring_and_failures_come_back():
    results = run_ranks(3, _pool_rank, 1)
    trainers, server = results[:2], results[2]
    assert server == {"scored": 8, "clients": [0, 1], "default_group": False}
    for rank, r in enumerate(trainers):
        got, want = r["got"], r["want"]
        assert r["train_world"] == 2 and r["sum"] == 2.0
        assert got.sample_ids.tolist() == want.sample_ids.tolist() == [0, 1, 10, 11, 20, 21]
        for name in ("brightness", "peak"):
            torch.testing.assert_close(got.scores[name], want.scores[name], rtol=0, atol=0, equal_nan=True)
        assert got.failed.tolist() == want.failed.tolist() == [False, False, rank == 1, rank == 1, False, False]
        assert got.errors == want.errors and len(got.errors) == rank
        assert r["again"].scores["brightness"].tolist() == [1.0] and r["again"].sample_ids.tolist() == [0]


def test_reward_ranks_need_a_training_rank():
    from dancegrpo_hpc.checks import InputError
    from dancegrpo_hpc.validate import validate

    with pytest.raises(InputError, match="rollout.reward_ranks=2 leaves no training rank in a world of 2"):
        validate(TOY, ["rollout.reward_ranks=2"], world=2)
    text = validate(TOY, ["rollout.reward_ranks=1", "rollout.prompts_per_iteration=4"], world=3)
    assert "world 2 = data 2" in text and "launch 3 = 2 training + 1 reward ranks" in text
    with pytest.raises(InputError, match="rollout.reward_ranks must be an integer >= 0"):
        validate(TOY, ["rollout.reward_ranks=-1"])


def _torchrun(ranks, out, *overrides):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
           "-m", "dancegrpo_hpc.train", TOY, f"output_dir={out}", "train.iterations=2",
           "rollout.prompts_per_iteration=2", "rollout.group_size=4", "rollout.micro_batch=2", "sampling.steps=4",
           "data.eval_prompts=2", "eval.samples_per_prompt=1", "logging.tensorboard=false",
           "logging.sample_grid=false", "checkpoint.every=1", *overrides]
    env = dict(os.environ, OMP_NUM_THREADS="1", THP_MEM_ALLOC_ENABLE="1")
    return start_job(cmd, f"{out}.log", cwd=ROOT, env=env)  # own session: a timeout kills every rank


@pytest.mark.distributed
def test_torchrun_two_training_ranks_with_local_or_pooled_rewards(tmp_path):
    pooled = _torchrun(3, tmp_path / "pooled", "rollout.reward_ranks=1")
    out_pooled = finish_job(pooled, 600)
    local = _torchrun(2, tmp_path / "local")
    out_local = finish_job(local, 600)
    assert pooled.returncode == 0, out_pooled[-3000:]
    assert local.returncode == 0, out_local[-3000:]
    assert "[reward pool] rank 2: scored" in out_pooled
    a = [json.loads(x) for x in open(tmp_path / "pooled" / "metrics.jsonl")]
    b = [json.loads(x) for x in open(tmp_path / "local" / "metrics.jsonl")]
    assert [m["iteration"] for m in a] == [1, 2]
    for x, y in zip(a, b):
        for key in ("reward_mean", "reward_toy_text_alignment", "loss", "grad_norm", "trained_samples",
                    "reward_failures"):
            assert x[key] == y[key], (x["iteration"], key, x[key], y[key])
    assert all(m["trained_samples"] == 8 for m in b)
    sa, sb = (json.load(open(tmp_path / d / "summary.json")) for d in ("pooled", "local"))
    assert sa["reward_before"] == sb["reward_before"] and sa["reward_after"] == sb["reward_after"]
    assert sb["iterations"] == 2
    for run in ("pooled", "local"):  # one optimizer shard per training rank, none for the reward rank
        ckpt = tmp_path / run / "checkpoints" / "iter_0000002"
        assert sorted(p.name for p in ckpt.glob("optim_rank*.pt")) == ["optim_rank0.pt", "optim_rank1.pt"]
