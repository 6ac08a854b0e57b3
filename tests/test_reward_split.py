"""Each GPU of a tensor x Ulysses group decodes and scores only its share of the data rank's
videos (rl/reward_split.py): which rows it takes, the group's results merged back in row order,
and a 2-rank TP (and Ulysses) trainer that scores half the videos per rank yet ends with the
same scores, failures, error lines, advantages, metrics and weights as when every rank scored
everything; with rewards on a pool rank too."""

import os
import re

import pytest
import torch

from dist_utils import run_ranks
from trainer_utils import TinyWorld, tiny_config

from dancegrpo_hpc.rewards import RewardResults, register_reward
from dancegrpo_hpc.rl.reward_split import _merge, member_rows

SCORED = {"videos": 0}  # per process: videos the fault-injecting reward scored


class _Flaky:
    """Raises on one train prompt's and one held-out prompt's videos, NaN for another prompt's."""

    name = "split_flaky"

    def __call__(self, videos, prompts, **_):
        SCORED["videos"] += len(videos)
        if "prompt 1" in prompts or "held out 1" in prompts:
            raise RuntimeError("reward server unavailable")
        out = videos.mean(dim=(1, 2, 3, 4))
        out[[p == "prompt 2" for p in prompts]] = float("nan")
        return out


register_reward("split_flaky", lambda **_: _Flaky(), replace=True)
REWARDS = [{"name": "split_flaky", "weight": 1.0}, {"name": "test_contrast", "weight": 0.5}]


def test_member_rows_cover_every_row_once_and_interleave():
    members = 3
    parts = [(0, 4), (4, 8), (8, 10)]  # micro-batches of 4 of a data rank's 10 rows
    shares = [[r for start, stop in parts for r in member_rows(start, stop, m, members)] for m in range(members)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert member_rows(0, 1, 1, 2) == [] and member_rows(5, 9, 1, 2) == [5, 7]
    assert member_rows(0, 6, 0, 1) == list(range(6))  # one member: every row, as before the split


def _results(ids, scores, failed, errors=()):
    return RewardResults(torch.tensor(ids), {"a": torch.tensor(scores)}, torch.tensor(failed), list(errors))


def test_merge_puts_rows_in_order_and_refuses_gaps_and_overlaps():
    even = _results([10, 12], [0.5, float("nan")], [False, True], ["a: samples [12]: non-finite score (NaN or inf)"])
    odd = _results([11, 13], [1.5, 2.5], [False, False])
    out = _merge([(r.sample_ids, r.scores, r.failed, r.errors) for r in (even, odd)], [10, 11, 12, 13], ["a", "b"])
    assert out.sample_ids.tolist() == [10, 11, 12, 13]
    torch.testing.assert_close(out.scores["a"], torch.tensor([0.5, 1.5, float("nan"), 2.5]), rtol=0, atol=0,
                               equal_nan=True)
    assert torch.isnan(out.scores["b"]).all()  # a reward no member ran stays NaN
    assert out.failed.tolist() == [False, False, True, False]
    assert out.errors == ["a: samples [12]: non-finite score (NaN or inf)"]
    assert _merge([None, (odd.sample_ids, odd.scores, odd.failed, [])], [11, 13], ["a"]).scores["a"].tolist() == \
        [1.5, 2.5]  # a member without rows
    as_part = (even.sample_ids, even.scores, even.failed, [])
    with pytest.raises(RuntimeError, match=r"no member scored samples \[11, 13\]"):
        _merge([as_part], [10, 11, 12, 13], ["a"])
    with pytest.raises(RuntimeError, match="another member scored too"):
        _merge([as_part, as_part], [10, 12], ["a"])
    with pytest.raises(RuntimeError, match=r"member 0 scored samples \[10, 12\] outside"):
        _merge([as_part], [11, 13], ["a"])


# ---- the group's gather on spawned gloo ranks ---------------------------------------------------------
def _gather_ranks(rank, world, layouts):
    from megatron.core import parallel_state as ps

    out = []
    for tp, ulysses in layouts:  # one spawn, megatron's groups made afresh per layout
        out.append(_gather_rank(tp, ulysses))
        ps.destroy_model_parallel()
    return out


def _gather_rank(tp, ulysses):
    from megatron.core import parallel_state as ps

    from dancegrpo_hpc.distributed import parallel
    from dancegrpo_hpc.rl.reward_split import RewardSplit

    parallel.initialize(tp, ulysses)
    split = RewardSplit.model_replica()
    dp_rank = ps.get_data_parallel_rank()
    ids = [100 * dp_rank + r for r in range(5)]  # this data rank's 5 rows
    rows = split.rows(0, 5)
    scores = torch.tensor([100.0 * dp_rank + r + 0.25 for r in rows])
    mine = RewardResults(torch.tensor([ids[r] for r in rows]), {"a": scores}, torch.tensor([r == 3 for r in rows]),
                         [f"a: samples [{ids[r]}]: broken" for r in rows if r == 3])
    out = split.gather(mine, ids, ["a"])
    return {"dp_rank": dp_rank, "members": split.members, "rows": rows, "ids": out.sample_ids.tolist(),
            "scores": out.scores["a"].tolist(), "failed": out.failed.tolist(), "errors": out.errors}


@pytest.mark.distributed
def test_gather_over_the_tensor_and_ulysses_group():
    """4 ranks: TP 2 x data 2 (two groups of 2, which must not mix), then TP 2 x Ulysses 2 (one group of 4)."""
    layouts = [(2, 1), (2, 2)]
    per_rank = run_ranks(4, _gather_ranks, layouts)
    for (tp, ulysses), results in zip(layouts, zip(*per_rank)):
        _check_gathered(results, tp * ulysses)


def _check_gathered(results, g):
    for r in results:
        d = r["dp_rank"]
        assert r["members"] == g
        assert r["ids"] == [100 * d + k for k in range(5)]
        assert r["scores"] == [100.0 * d + k + 0.25 for k in range(5)]
        assert r["failed"] == [k == 3 for k in range(5)]
        assert r["errors"] == [f"a: samples [{100 * d + 3}]: broken"]  # once, from the member that scored it
    for d in {r["dp_rank"] for r in results}:  # each group's members share the rows out exactly
        rows = sorted(x for r in results if r["dp_rank"] == d for x in r["rows"])
        assert rows == list(range(5))


# ---- the trainer: split equals replicated -------------------------------------------------------------
def _counting_world():
    world = TinyWorld(prompts=4)  # all 4 train prompts in iteration 1: "prompt 1" and "prompt 2" fail
    decode = world.decode
    world.decoded = 0

    def counted(latents, cond=None):
        world.decoded += latents.shape[0]
        return decode(latents, cond)

    world.decode = counted
    return world


def _one_iteration(trainer):
    """Held-out evaluation, one iteration, and what each part left: scores, failures, error
    lines, advantages, metrics, weights; and how many videos this rank decoded and scored."""
    from dancegrpo_hpc.models.hunyuan_video.weights import export_state_dict

    seen = {}
    advantages = trainer.advantages

    def recording(batch, results):
        adv = advantages(batch, results)
        seen.update(errors=list(results.errors), scores=adv.scores, failed=adv.failed,
                    advantages=adv.assigned.advantages, keep=adv.assigned.keep)
        return adv

    trainer.advantages = recording
    SCORED["videos"], trainer.world.decoded = 0, 0
    evaluation, _ = trainer.evaluate()
    eval_counts = (trainer.world.decoded, SCORED["videos"])
    SCORED["videos"], trainer.world.decoded = 0, 0
    metrics = trainer.run_iteration(0)
    metrics = {k: v for k, v in metrics.items() if not k.startswith("time_") and k != "iteration_s"}
    return dict(seen, evaluation=evaluation, metrics=metrics, weights=export_state_dict(trainer.model),
                eval_counts=eval_counts, counts=(trainer.world.decoded, SCORED["videos"]))


def _trainer_rank(rank, world, output_dir, parallel, replicated_too, reward_ranks=0):
    from dancegrpo_hpc.rewards import AsyncRewardRunner, build_rewards
    from dancegrpo_hpc.rl.reward_split import RewardSplit
    from dancegrpo_hpc.rl.trainer import Trainer

    config = tiny_config(os.path.join(output_dir, f"r{rank}"), rewards=REWARDS, parallel=parallel,
                         rollout={"micro_batch": 4, "reward_ranks": reward_ranks}, checkpoint={"every": 0})
    pool = None
    if reward_ranks:
        from dancegrpo_hpc.rewards.pool import initialize, serve

        pool = initialize(reward_ranks)
        if pool.is_server:
            with AsyncRewardRunner(build_rewards(config.rewards)) as runner:
                return {"server_batches": serve(pool, runner), "server_videos": SCORED["videos"]}
    runs = {}
    for kind in (("replicated", "split") if replicated_too else ("split",)):
        trainer = Trainer(config, world=_counting_world(), reward_pool=pool)
        if kind == "replicated":  # the engine before the split: every member scores every row
            trainer.split = RewardSplit()
        try:
            runs[kind] = _one_iteration(trainer)
        finally:
            trainer.close()
    return runs


def _assert_same(ref, run):
    for key in ("scores",):
        assert ref[key].keys() == run[key].keys()
        for name in ref[key]:
            torch.testing.assert_close(run[key][name], ref[key][name], rtol=0, atol=0, equal_nan=True)
    for key in ("failed", "advantages", "keep"):
        torch.testing.assert_close(run[key], ref[key], rtol=0, atol=0, equal_nan=True)
    assert run["metrics"].keys() == ref["metrics"].keys()
    for key, value in ref["metrics"].items():
        assert run["metrics"][key] == value or (value != value and run["metrics"][key] != run["metrics"][key]), key
    without_line = ("first_error",)  # the line names the samples of the batch that failed: see _failing_samples
    assert {k: v for k, v in run["evaluation"].items() if k not in without_line} == \
        {k: v for k, v in ref["evaluation"].items() if k not in without_line}
    assert run["weights"].keys() == ref["weights"].keys()
    for name, w in ref["weights"].items():
        assert torch.equal(run["weights"][name], w), name


def _failing_samples(errors):
    """(reward, sample id, what) for every sample an error line names."""
    out = []
    for line in errors:
        reward, ids, what = re.fullmatch(r"(\w+): samples \[([\d, ]+)\]: (.*)", line).groups()
        out += [(reward, int(i), what) for i in ids.split(", ")]
    return sorted(out)


@pytest.mark.distributed
@pytest.mark.parametrize("parallel", [{"tensor": 2}, {"ulysses": 2}])
def test_split_scoring_equals_replicated_bit_for_bit(tmp_path, parallel):
    for rank, runs in enumerate(run_ranks(2, _trainer_rank, str(tmp_path), parallel, True)):
        ref, split = runs["replicated"], runs["split"]
        _assert_same(ref, split)
        m = split["metrics"]
        assert m["dropped_groups"] == 2 and m["reward_failures"] == 8 and m["trained_samples"] == 8
        assert split["evaluation"]["failed"] == 2 and split["evaluation"]["samples"] == 2
        failure = "RuntimeError: reward server unavailable"
        assert ref["evaluation"]["first_error"] == f"split_flaky: samples [0, 1]: {failure}"
        assert split["evaluation"]["first_error"] == f"split_flaky: samples [0]: {failure}"  # member 0's sample
        # every failing sample named once, by the member that scored it: half of each replicated line
        assert _failing_samples(split["errors"]) == _failing_samples(ref["errors"])
        assert len(_failing_samples(ref["errors"])) == 8 and len(split["errors"]) == 2 * len(ref["errors"])
        # 16 rollout videos and 2 held-out prompts x 2 samples per data rank: each rank decodes and scores half
        assert ref["counts"] == (16, 16) and split["counts"] == (8, 8), rank
        assert ref["eval_counts"] == (4, 4) and split["eval_counts"] == (2, 2), rank


@pytest.mark.distributed
def test_split_scoring_on_a_reward_pool_rank(tmp_path):
    """2 TP ranks send their halves to one reward rank: the pool scores each video once and the
    trainer ends as with local scoring."""
    *trainers, server = run_ranks(3, _trainer_rank, str(tmp_path / "pooled"), {"tensor": 2}, False, 1)
    local = run_ranks(2, _trainer_rank, str(tmp_path / "local"), {"tensor": 2}, False)
    # the iteration's 16 videos and the evaluation's 4, each once: 4 micro-batches + 2 held-out prompts per rank
    assert server == {"server_videos": 16 + 4, "server_batches": 2 * (4 + 2)}
    for pooled, runs in zip(trainers, local):
        _assert_same(runs["split"], pooled["split"])
        assert pooled["split"]["errors"] == runs["split"]["errors"]
        assert pooled["split"]["counts"] == (8, 0) and pooled["split"]["eval_counts"] == (2, 0)  # decoded half here
