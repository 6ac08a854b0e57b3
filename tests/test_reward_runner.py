"""Reward interface, registry and the asynchronous reward runner: scores match direct
calls, scoring overlaps other work, failures (exceptions, NaN/inf, wrong shapes,
timeouts) fail exactly the affected samples, and bad config fails with one line.
Uses its own small rewards; the toy rewards module is faked where needed."""

import math
import sys
import threading
import time
import types

import pytest
import torch

from dancegrpo_hpc.checks import InputError
from dancegrpo_hpc.rewards import (
    AsyncRewardRunner,
    BinaryReward,
    FunctionReward,
    RewardSpec,
    build_rewards,
    function_reward_factory,
    group_failures,
    known_rewards,
    register_reward,
    unregister_reward,
)
from dancegrpo_hpc.rewards import registry


def brightness(videos, prompts):
    return videos.mean(dim=(1, 2, 3, 4))


def prompt_length(videos, prompts):
    return torch.tensor([float(len(p)) for p in prompts])


def pair(name, fn, **spec_fields):
    return RewardSpec(name, **spec_fields), FunctionReward(name, fn)


def batch(size, frames=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    videos = torch.rand(size, frames, 3, 4, 4, generator=g)
    prompts = [f"prompt {seed}-{i}" + "!" * i for i in range(size)]
    return videos, prompts


def sleeper(seconds, active=None, peak=None):
    """Reward that sleeps; optionally records how many of its calls run at once."""
    lock = threading.Lock()

    def fn(videos, prompts):
        if active is not None:
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
        time.sleep(seconds)
        if active is not None:
            with lock:
                active[0] -= 1
        return torch.ones(videos.shape[0])

    return fn


# -- scores -----------------------------------------------------------------------------


def test_scores_equal_direct_calls_in_submission_order():
    runner = AsyncRewardRunner([pair("bright", brightness), pair("length", prompt_length)])
    batches = [batch(3, seed=1), batch(2, seed=2), batch(4, seed=3)]
    ids = [[10, 11, 12], [0, 1], [7, 8, 9, 3]]
    for (videos, prompts), sample_ids in zip(batches, ids):
        runner.submit(videos, prompts, sample_ids)
    results = runner.collect()
    assert results.sample_ids.tolist() == [i for b in ids for i in b]
    assert torch.equal(results.scores["bright"], torch.cat([brightness(v, p) for v, p in batches]))
    assert torch.equal(results.scores["length"], torch.cat([prompt_length(v, p) for v, p in batches]))
    assert results.scores["bright"].dtype == torch.float32
    assert not results.failed.any() and results.errors == []
    # collect empties the runner
    empty = runner.collect()
    assert empty.sample_ids.numel() == 0 and empty.scores["bright"].numel() == 0


def test_conditioning_reaches_rewards_that_name_it():
    def reference_distance(videos, prompts, reference):
        return (videos - reference).abs().mean(dim=(1, 2, 3, 4))

    runner = AsyncRewardRunner([pair("ref", reference_distance), pair("bright", brightness)])
    videos, prompts = batch(2)
    reference = torch.full_like(videos, 0.5)
    results = runner.run_sync(videos, prompts, reference=reference)
    assert torch.allclose(results.scores["ref"], (videos - 0.5).abs().mean(dim=(1, 2, 3, 4)))
    assert torch.equal(results.scores["bright"], brightness(videos, prompts))  # took no conditioning
    assert results.sample_ids.tolist() == [0, 1]


def test_rewards_run_without_autograd():
    seen = []

    def records_grad_mode(videos, prompts):
        seen.append(torch.is_grad_enabled())
        return videos.mean(dim=(1, 2, 3, 4))

    videos, prompts = batch(2)
    AsyncRewardRunner([pair("g", records_grad_mode)]).run_sync(videos.requires_grad_(), prompts)
    assert seen == [False]


# -- overlap and scheduling -------------------------------------------------------------


def test_scoring_overlaps_work_in_the_main_thread():
    runner = AsyncRewardRunner([pair("slow", sleeper(0.3))], calls_per_reward=3)
    start = time.perf_counter()
    for k in range(3):
        runner.submit(*batch(2, seed=k), [2 * k, 2 * k + 1])
    time.sleep(0.3)  # the sampler producing the next micro-batch
    results = runner.collect()
    wall = time.perf_counter() - start
    serial = 3 * 0.3 + 0.3
    assert not results.failed.any()
    assert wall < 0.8 * serial, f"no overlap: {wall:.2f} s vs serial {serial:.2f} s"


def test_one_call_per_reward_by_default_but_rewards_run_side_by_side():
    active, peak = [0], [0]
    runner = AsyncRewardRunner([pair("a", sleeper(0.1, active, peak)), pair("b", sleeper(0.4)),
                                pair("c", sleeper(0.4))])
    start = time.perf_counter()
    for k in range(3):
        runner.submit(*batch(1, seed=k), [k])
    results = runner.collect()
    wall = time.perf_counter() - start
    assert not results.failed.any()
    assert peak[0] == 1  # reward "a" never ran two batches at once
    # b and c run beside each other and beside a: 3 x 0.4 s each, not 3 x 0.9 s in a row
    assert wall < 0.8 * (3 * 0.9), f"rewards did not run side by side: {wall:.2f} s"


def test_queued_batches_do_not_time_out_behind_slow_ones():
    # three 0.3 s batches of one reward run one after another (0.9 s in all); each is
    # timed from its own start, so a 0.6 s timeout fails none of them
    runner = AsyncRewardRunner([pair("slow", sleeper(0.3), timeout_s=0.6)])
    for k in range(3):
        runner.submit(*batch(2, seed=k), [2 * k, 2 * k + 1])
    results = runner.collect()
    assert not results.failed.any(), results.errors


# -- failures ---------------------------------------------------------------------------


def test_raising_reward_fails_exactly_its_batch():
    def picky(videos, prompts):
        if prompts[0].startswith("bad"):
            raise RuntimeError("cannot score this\nsecond line")
        return brightness(videos, prompts)

    runner = AsyncRewardRunner([pair("picky", picky), pair("length", prompt_length)])
    good1, bad, good2 = batch(2, seed=1), batch(3, seed=2), batch(2, seed=3)
    runner.submit(*good1, [0, 1])
    runner.submit(bad[0], ["bad prompt"] * 3, [2, 3, 4])
    runner.submit(*good2, [5, 6])
    results = runner.collect()
    assert results.failed.tolist() == [False, False, True, True, True, False, False]
    assert torch.isnan(results.scores["picky"][2:5]).all()
    assert torch.equal(results.scores["picky"][:2], brightness(*good1))
    assert torch.equal(results.scores["length"][2:5], torch.full((3,), 10.0))  # other reward unaffected
    assert results.errors == ["picky: samples [2, 3, 4]: RuntimeError: cannot score this"]


def test_non_finite_scores_fail_only_those_samples():
    def spotty(videos, prompts):
        return torch.tensor([1.0, float("nan"), 2.0, float("inf"), -float("inf")])

    results = AsyncRewardRunner([pair("spotty", spotty)]).run_sync(*batch(5), [4, 5, 6, 7, 8])
    assert results.failed.tolist() == [False, True, False, True, True]
    scores = results.scores["spotty"]
    assert scores[[0, 2]].tolist() == [1.0, 2.0] and torch.isnan(scores[[1, 3, 4]]).all()
    assert results.errors == ["spotty: samples [5, 7, 8]: non-finite score (NaN or inf)"]


@pytest.mark.parametrize("output, expected", [
    (lambda b: torch.ones(b, 1), "returned shape (3, 1), expected (3,)"),
    (lambda b: torch.ones(b + 1), "returned shape (4,), expected (3,)"),
    (lambda b: [1.0] * b, "returned list, expected a Tensor of shape (3,)"),
])
def test_wrong_output_fails_the_batch(output, expected):
    results = AsyncRewardRunner([pair("odd", lambda v, p: output(len(p)))]).run_sync(*batch(3))
    assert results.failed.all() and torch.isnan(results.scores["odd"]).all()
    assert results.errors == [f"odd: samples [0, 1, 2]: bad output: {expected}"]


def test_stuck_reward_times_out_without_blocking_collect_or_its_next_batch():
    release = threading.Event()
    calls = []

    def stuck_first(videos, prompts):
        calls.append(prompts[0])
        if len(calls) == 1:
            release.wait(5.0)  # stands in for a hung model call
            return torch.full((len(prompts),), 99.0)
        return brightness(videos, prompts)

    runner = AsyncRewardRunner([pair("stuck", stuck_first, timeout_s=0.2), pair("bright", brightness)])
    first, second = batch(2, seed=1), batch(2, seed=2)
    start = time.perf_counter()
    runner.submit(*first, [0, 1])
    runner.submit(*second, [2, 3])
    results = runner.collect()
    wall = time.perf_counter() - start
    assert wall < 1.0, f"collect waited {wall:.2f} s on a 0.2 s timeout"
    assert results.failed.tolist() == [True, True, False, False]
    assert results.errors == ["stuck: samples [0, 1]: timeout after 0.2 s"]
    # the batch queued behind the stuck call got its own full timeout and scored
    assert torch.equal(results.scores["stuck"][2:], brightness(*second))
    assert torch.equal(results.scores["bright"], torch.cat([brightness(*first), brightness(*second)]))
    # the stuck call's late result is discarded, not leaked into the next round
    release.set()
    time.sleep(0.05)
    assert runner.collect().sample_ids.numel() == 0
    assert not runner.run_sync(*batch(2, seed=3)).failed.any()


def test_close_cancels_queued_calls_and_does_not_wait_for_running_ones():
    release = threading.Event()

    def hang(videos, prompts):
        release.wait(5.0)
        return torch.ones(len(prompts))

    runner = AsyncRewardRunner([pair("hang", hang, timeout_s=0.3)])
    runner.submit(*batch(1, seed=1), [0])
    runner.submit(*batch(1, seed=2), [1])
    start = time.perf_counter()
    runner.close()
    assert time.perf_counter() - start < 0.1
    results = runner.collect()
    assert time.perf_counter() - start < 1.0
    assert results.failed.tolist() == [True, True]
    assert results.errors == ["hang: samples [0]: timeout after 0.3 s",
                              "hang: samples [1]: cancelled: runner closed before it started"]
    with pytest.raises(RuntimeError, match="closed"):
        runner.submit(*batch(1), [5])
    release.set()


# -- input checks -----------------------------------------------------------------------


def test_submit_rejects_bad_batches():
    runner = AsyncRewardRunner([pair("bright", brightness)])
    videos, prompts = batch(2)
    with pytest.raises(InputError, match=r"videos must be a float tensor \[B, F, C, H, W\]"):
        runner.submit(videos[:, 0], prompts, [0, 1])
    with pytest.raises(InputError, match="1 prompts for 2 videos"):
        runner.submit(videos, prompts[:1], [0, 1])
    with pytest.raises(InputError, match="repeat an id"):
        runner.submit(videos, prompts, [3, 3])
    runner.submit(videos, prompts, torch.tensor([0, 1]))
    with pytest.raises(InputError, match=r"sample_ids \[1\] were already submitted"):
        runner.submit(videos, prompts, [1, 2])
    assert runner.collect().sample_ids.tolist() == [0, 1]


def test_runner_rejects_bad_reward_lists():
    with pytest.raises(InputError, match="non-empty list"):
        AsyncRewardRunner([])
    with pytest.raises(InputError, match="'a' appear more than once"):
        AsyncRewardRunner([pair("a", brightness), pair("a", prompt_length)])
    with pytest.raises(InputError, match=r"rewards\[0\] \(a\): timeout_s must be a positive"):
        AsyncRewardRunner([pair("a", brightness, timeout_s=0)])
    with pytest.raises(InputError, match="max_workers must be an int >= 1"):
        AsyncRewardRunner([pair("a", brightness)], max_workers=0)


def test_group_failures_drops_groups_with_any_failed_sample():
    failed = torch.tensor([False, False, False, True, False, False, True, True, False])
    assert group_failures(failed, 3).tolist() == [False, True, True]
    assert group_failures(torch.zeros(4, dtype=torch.bool), 2).tolist() == [False, False]
    with pytest.raises(InputError, match="do not split into groups of 4"):
        group_failures(failed, 4)
    with pytest.raises(InputError, match="1-D bool tensor"):
        group_failures(failed.float(), 3)


# -- interface pieces -------------------------------------------------------------------


def test_binary_reward_thresholds_and_keeps_non_finite_as_nan():
    raw = FunctionReward("raw", lambda v, p: torch.tensor([0.2, 0.5, 0.7, float("nan"), float("inf")]))
    binary = BinaryReward(raw, threshold=0.5)
    assert binary.name == "raw"
    out = binary(*batch(5))
    assert out[:3].tolist() == [0.0, 0.0, 1.0] and torch.isnan(out[3:]).all()
    with pytest.raises(InputError, match="threshold must be a finite number"):
        BinaryReward(raw, float("nan"))


def test_function_reward_passes_only_named_conditioning():
    seen = {}

    def with_kwargs(videos, prompts, **extra):
        seen.update(extra)
        return brightness(videos, prompts)

    videos, prompts = batch(2)
    FunctionReward("any", with_kwargs)(videos, prompts, reference=1, mask=2)
    assert seen == {"reference": 1, "mask": 2}
    assert torch.equal(FunctionReward("plain", brightness)(videos, prompts, reference=1), brightness(videos, prompts))


# -- registry ---------------------------------------------------------------------------


@pytest.fixture
def fresh_registry(monkeypatch):
    """An empty registry with a fake toy module, so tests see only their own rewards."""
    fake_toy = types.ModuleType(registry._TOY_MODULE)
    fake_toy.TOY_REWARDS = {"toy_bright": brightness}
    monkeypatch.setitem(sys.modules, registry._TOY_MODULE, fake_toy)
    monkeypatch.setattr(registry, "_FACTORIES", {})
    monkeypatch.setattr(registry, "_toy_loaded", False)
    return registry


def test_build_rewards_from_yaml_items_with_weights_and_binary(fresh_registry):
    register_reward("length", function_reward_factory("length", prompt_length))
    built = build_rewards([{"name": "toy_bright", "weight": 0.5},
                           {"name": "length", "binary_threshold": 9.5, "timeout_s": 5}])
    (spec_a, bright), (spec_b, length) = built
    assert (spec_a.name, spec_a.weight, spec_a.timeout_s) == ("toy_bright", 0.5, 60.0)
    assert (spec_b.weight, spec_b.timeout_s) == (1.0, 5)
    assert isinstance(length, BinaryReward) and length.name == "length"
    videos, prompts = batch(3)  # prompt lengths 10, 11, 12
    assert torch.equal(bright(videos, prompts), brightness(videos, prompts))
    assert length(videos, prompts).tolist() == [1.0, 1.0, 1.0]
    results = AsyncRewardRunner(built).run_sync(videos, ["short", "a much longer prompt", "x"])
    assert results.scores["length"].tolist() == [0.0, 1.0, 0.0]
    assert known_rewards() == ["length", "toy_bright"]


def test_options_become_keyword_arguments(fresh_registry):
    def scaled(videos, prompts, scale=1.0):
        return scale * brightness(videos, prompts)

    register_reward("scaled", function_reward_factory("scaled", scaled))
    [(_, reward)] = build_rewards([RewardSpec("scaled", options={"scale": 3.0})])
    videos, prompts = batch(2)
    assert torch.allclose(reward(videos, prompts), 3.0 * brightness(videos, prompts))
    with pytest.raises(InputError, match="shift not accepted; scaled takes scale"):
        build_rewards([RewardSpec("scaled", options={"shift": 1})])
    with pytest.raises(InputError, match="scale not accepted; toy_bright takes no options"):
        build_rewards([RewardSpec("toy_bright", options={"scale": 1})])


def test_unknown_reward_lists_known_names(fresh_registry):
    register_reward("length", function_reward_factory("length", prompt_length))
    with pytest.raises(InputError, match=r"rewards\[1\].name: unknown reward 'hps'; known rewards: length, toy_bright"):
        build_rewards([{"name": "length"}, {"name": "hps"}])


@pytest.mark.parametrize("item, message", [
    ({"name": "toy_bright", "weight": 0}, r"rewards\[0\] \(toy_bright\): weight must be a positive finite number"),
    ({"name": "toy_bright", "weight": -1.0}, "weight must be a positive finite number; got -1.0"),
    ({"name": "toy_bright", "weight": math.nan}, "weight must be a positive finite number; got nan"),
    ({"name": "toy_bright", "timeout_s": 0}, "timeout_s must be a positive finite number; got 0"),
    ({"name": "toy_bright", "timeout_s": -5}, "timeout_s must be a positive finite number; got -5"),
    ({"name": "toy_bright", "binary_threshold": "high"}, "binary_threshold must be a finite number or null"),
    ({"name": "toy_bright", "wieght": 1}, r"rewards\[0\]: unknown field\(s\) wieght; allowed: name, weight"),
    ({"weight": 1}, r"rewards\[0\]: missing 'name'"),
    ({"name": ""}, r"rewards\[0\].name: must be a non-empty string"),
])
def test_bad_spec_fields_fail_with_one_line(fresh_registry, item, message):
    with pytest.raises(InputError, match=message):
        build_rewards([item])


def test_duplicate_names_and_registrations_are_refused(fresh_registry):
    with pytest.raises(InputError, match="'toy_bright' appear more than once"):
        build_rewards([{"name": "toy_bright"}, {"name": "toy_bright", "weight": 2.0}])
    register_reward("length", function_reward_factory("length", prompt_length))
    with pytest.raises(InputError, match="'length' is already registered"):
        register_reward("length", function_reward_factory("length", brightness))
    register_reward("length", function_reward_factory("length", brightness), replace=True)
    unregister_reward("length")
    assert "length" not in known_rewards()
    with pytest.raises(InputError, match="non-empty list"):
        build_rewards([])


def test_package_works_without_the_toy_module(monkeypatch):
    monkeypatch.setitem(sys.modules, registry._TOY_MODULE, None)  # import raises ModuleNotFoundError
    monkeypatch.setattr(registry, "_FACTORIES", {})
    monkeypatch.setattr(registry, "_toy_loaded", False)
    assert known_rewards() == []
    with pytest.raises(InputError, match=r"unknown reward 'toy_motion'; known rewards: \(none registered\)"):
        build_rewards([{"name": "toy_motion"}])
