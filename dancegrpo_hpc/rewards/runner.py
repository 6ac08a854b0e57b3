"""Asynchronous reward scoring: the trainer submits each decoded rollout
micro-batch and keeps sampling the next one while reward threads score it.

Scheduling. Every (batch, reward) pair is one call, run on its own daemon thread.
Calls start in submission order, at most `max_workers` at a time and at most
`calls_per_reward` at a time per reward (default 1: model rewards, tokenizers and
CUDA work are often not thread-safe, and one reward's batches then run in order).
Torch ops release the GIL, so reward threads run on other cores beside the sampler.

Timeouts. A call's timeout_s counts from when that call STARTED, not from submit:
a batch waiting behind another batch of the same reward must not time out because
of the earlier work. Python cannot kill a thread, so a timed-out call keeps running
in the background; its samples are marked failed, its late result is discarded,
its slot goes to the next call at once (so that reward may run beside its stuck
call), and neither collect() nor close() waits for it (its thread is a daemon, so it does not hold up interpreter exit either).

Inputs are held by reference until collect(): do not overwrite submitted videos
in place before then.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..checks import require
from .base import Reward, RewardSpec, check_unique_names

_QUEUED, _RUNNING, _DONE, _TIMED_OUT, _CANCELLED = "queued", "running", "done", "timed out", "cancelled"


@dataclass
class RewardResults:
    """Scores of every sample submitted since the last collect(), in submission order."""

    sample_ids: torch.Tensor  # [N] int64
    scores: Dict[str, torch.Tensor]  # reward name -> [N] float32, NaN where that reward failed
    failed: torch.Tensor  # [N] bool: some reward raised, timed out, or gave a bad or non-finite score
    errors: List[str]  # one line per failure: reward, samples, what went wrong


class _Batch:
    def __init__(self, videos, prompts, sample_ids, conditioning):
        self.videos, self.prompts, self.sample_ids, self.conditioning = videos, prompts, sample_ids, conditioning
        # New threads start on CUDA device 0 and their own view of streams: carry the
        # submitter's device, and make reward work wait for the kernels that made videos.
        self.cuda_device = torch.cuda.current_device() if torch.cuda.is_initialized() else None
        self.ready = torch.cuda.current_stream().record_event() if videos.is_cuda else None


class _Call:
    def __init__(self, batch: _Batch, reward_index: int):
        self.batch, self.reward_index = batch, reward_index
        self.state = _QUEUED
        self.started_at = 0.0
        self.scores: Optional[torch.Tensor] = None
        self.error: Optional[str] = None


class _BadOutput(Exception):
    pass


class AsyncRewardRunner:
    def __init__(self, rewards: Sequence[Tuple[RewardSpec, Reward]], max_workers: Optional[int] = None,
                 calls_per_reward: int = 1):
        require(isinstance(rewards, Sequence) and len(rewards) > 0,
                "AsyncRewardRunner: rewards must be a non-empty list of (RewardSpec, reward) pairs, "
                "e.g. from build_rewards")
        for i, pair in enumerate(rewards):
            require(isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], RewardSpec) and callable(pair[1]),
                    f"AsyncRewardRunner: rewards[{i}] must be a (RewardSpec, callable reward) pair; got {pair!r}")
            pair[0].validate(f"rewards[{i}]")
        check_unique_names("AsyncRewardRunner rewards", (spec.name for spec, _ in rewards))
        require(isinstance(calls_per_reward, int) and calls_per_reward >= 1,
                f"AsyncRewardRunner: calls_per_reward must be an int >= 1; got {calls_per_reward!r}")
        if max_workers is None:
            max_workers = len(rewards) * calls_per_reward
        require(isinstance(max_workers, int) and max_workers >= 1,
                f"AsyncRewardRunner: max_workers must be an int >= 1 (or None); got {max_workers!r}")
        self.rewards = list(rewards)
        self.max_workers = max_workers
        self.calls_per_reward = calls_per_reward
        self._cond = threading.Condition()
        self._batches: List[_Batch] = []
        self._calls: List[_Call] = []
        self._closed = False

    # -- public verbs -----------------------------------------------------------------

    def submit(self, videos: torch.Tensor, prompts: Sequence[str], sample_ids, **conditioning: Any) -> None:
        """Schedule every reward on this batch and return at once."""
        ids = _check_batch(videos, prompts, sample_ids)
        with self._cond:
            if self._closed:
                raise RuntimeError("AsyncRewardRunner.submit: the runner is closed")
            pending = {i for b in self._batches for i in b.sample_ids}
            clash = sorted(pending.intersection(ids))
            require(not clash, f"submit: sample_ids {_format_ids(clash)} were already submitted and not yet "
                               f"collected; give every sample of a round a distinct id")
            batch = _Batch(videos, list(prompts), ids, conditioning)
            self._batches.append(batch)
            self._calls.extend(_Call(batch, r) for r in range(len(self.rewards)))
            self._dispatch_locked()

    def collect(self) -> RewardResults:
        """Wait for every submitted batch (each call at most its timeout after it
        started) and return all their scores; the runner is then empty again."""
        with self._cond:
            while True:
                self._dispatch_locked()
                running = [c for c in self._calls if c.state == _RUNNING]
                if not running and not any(c.state == _QUEUED for c in self._calls):
                    break
                next_deadline = min(c.started_at + self._timeout(c) for c in running)
                self._cond.wait(timeout=max(next_deadline - time.monotonic(), 0.0))
            batches, calls = self._batches, self._calls
            self._batches, self._calls = [], []
        return self._assemble(batches, calls)

    def run_sync(self, videos: torch.Tensor, prompts: Sequence[str], sample_ids=None,
                 **conditioning: Any) -> RewardResults:
        """submit + collect (sample ids default to 0..B-1). Also collects whatever
        was submitted before."""
        if sample_ids is None:
            sample_ids = list(range(len(prompts)))
        self.submit(videos, prompts, sample_ids, **conditioning)
        return self.collect()

    def close(self) -> None:
        """Cancel calls that have not started; never waits for running ones."""
        with self._cond:
            self._closed = True
            for call in self._calls:
                if call.state == _QUEUED:
                    call.state, call.error = _CANCELLED, "cancelled: runner closed before it started"
            self._cond.notify_all()

    def __enter__(self) -> "AsyncRewardRunner":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- scheduling (all *_locked methods run under self._cond) ---------------------------

    def _timeout(self, call: _Call) -> float:
        return float(self.rewards[call.reward_index][0].timeout_s)

    def _dispatch_locked(self) -> None:
        now = time.monotonic()
        for call in self._calls:
            if call.state == _RUNNING and now - call.started_at >= self._timeout(call):
                call.state, call.error = _TIMED_OUT, f"timeout after {self._timeout(call):g} s"
        running = Counter(c.reward_index for c in self._calls if c.state == _RUNNING)
        for call in self._calls:
            if sum(running.values()) >= self.max_workers:
                break
            if call.state == _QUEUED and running[call.reward_index] < self.calls_per_reward:
                call.state, call.started_at = _RUNNING, time.monotonic()
                running[call.reward_index] += 1
                name = self.rewards[call.reward_index][0].name
                threading.Thread(target=self._run, args=(call,), name=f"reward-{name}", daemon=True).start()

    def _run(self, call: _Call) -> None:
        scores, error = None, None
        try:
            scores = self._score(call)
        except _BadOutput as exc:
            error = f"bad output: {exc}"
        except Exception as exc:  # a reward's failure fails its samples, not the run
            error = f"{type(exc).__name__}: {_first_line(exc)}"
        with self._cond:
            if call.state == _RUNNING:  # else it timed out and this late result is dropped
                call.state, call.scores, call.error = _DONE, scores, error
            self._dispatch_locked()
            self._cond.notify_all()

    def _score(self, call: _Call) -> torch.Tensor:
        batch = call.batch
        if batch.cuda_device is not None:
            torch.cuda.set_device(batch.cuda_device)
        if batch.ready is not None:
            torch.cuda.current_stream().wait_event(batch.ready)
        reward = self.rewards[call.reward_index][1]
        with torch.no_grad():  # grad mode is per thread; scores need no graph
            out = reward(batch.videos, batch.prompts, **batch.conditioning)
        size = len(batch.sample_ids)
        if not isinstance(out, torch.Tensor):
            raise _BadOutput(f"returned {type(out).__name__}, expected a Tensor of shape ({size},)")
        if tuple(out.shape) != (size,):
            raise _BadOutput(f"returned shape {tuple(out.shape)}, expected ({size},)")
        return out.detach().to(device="cpu", dtype=torch.float32)

    # -- results --------------------------------------------------------------------------

    def _assemble(self, batches: List[_Batch], calls: List[_Call]) -> RewardResults:
        ids = [i for b in batches for i in b.sample_ids]
        offsets, start = {}, 0
        for b in batches:
            offsets[id(b)], start = start, start + len(b.sample_ids)
        scores = {spec.name: torch.full((len(ids),), float("nan")) for spec, _ in self.rewards}
        failed = torch.zeros(len(ids), dtype=torch.bool)
        errors = []
        for call in calls:
            name = self.rewards[call.reward_index][0].name
            start = offsets[id(call.batch)]
            span = slice(start, start + len(call.batch.sample_ids))
            if call.error is not None:
                failed[span] = True
                errors.append(f"{name}: samples {_format_ids(call.batch.sample_ids)}: {call.error}")
                continue
            bad = ~torch.isfinite(call.scores)
            scores[name][span] = call.scores.masked_fill(bad, float("nan"))
            if bad.any():
                failed[span] |= bad
                bad_ids = [i for i, b in zip(call.batch.sample_ids, bad.tolist()) if b]
                errors.append(f"{name}: samples {_format_ids(bad_ids)}: non-finite score (NaN or inf)")
        return RewardResults(torch.tensor(ids, dtype=torch.int64), scores, failed, errors)


def group_failures(failed: torch.Tensor, group_size: int) -> torch.Tensor:
    """[P*G] per-sample failures -> [P] bool: a group with any failed sample is
    dropped, since its advantages would compare against a missing score."""
    require(isinstance(failed, torch.Tensor) and failed.dtype == torch.bool and failed.dim() == 1,
            f"group_failures: failed must be a 1-D bool tensor; got "
            f"{tuple(failed.shape) if isinstance(failed, torch.Tensor) else type(failed).__name__}"
            f"{' ' + str(failed.dtype) if isinstance(failed, torch.Tensor) else ''}")
    require(isinstance(group_size, int) and group_size >= 1,
            f"group_failures: group_size must be an int >= 1; got {group_size!r}")
    require(failed.numel() % group_size == 0,
            f"group_failures: {failed.numel()} samples do not split into groups of {group_size}")
    return failed.view(-1, group_size).any(dim=1)


def _check_batch(videos, prompts, sample_ids) -> List[int]:
    require(isinstance(videos, torch.Tensor) and videos.is_floating_point() and videos.dim() == 5,
            f"submit: videos must be a float tensor [B, F, C, H, W] with values in [0, 1]; got "
            f"{tuple(videos.shape) if isinstance(videos, torch.Tensor) else type(videos).__name__}"
            f"{' ' + str(videos.dtype) if isinstance(videos, torch.Tensor) else ''}")
    size = videos.shape[0]
    require(isinstance(prompts, Sequence) and not isinstance(prompts, str) and all(isinstance(p, str) for p in prompts),
            f"submit: prompts must be a list of strings; got {type(prompts).__name__}")
    require(len(prompts) == size, f"submit: {len(prompts)} prompts for {size} videos; give one prompt per video")
    if isinstance(sample_ids, torch.Tensor):
        require(sample_ids.dim() == 1 and not sample_ids.is_floating_point() and not sample_ids.is_complex(),
                f"submit: sample_ids tensor must be 1-D integer; got {tuple(sample_ids.shape)} {sample_ids.dtype}")
        sample_ids = sample_ids.tolist()
    require(isinstance(sample_ids, Sequence) and all(isinstance(i, int) and not isinstance(i, bool) for i in sample_ids),
            f"submit: sample_ids must be a list of ints; got {sample_ids!r}")
    require(len(sample_ids) == size, f"submit: {len(sample_ids)} sample_ids for {size} videos; give one id per video")
    require(len(set(sample_ids)) == size, f"submit: sample_ids {list(sample_ids)} repeat an id; ids must be distinct")
    return list(sample_ids)


def _format_ids(ids: Sequence[int]) -> str:
    ids = list(ids)
    if len(ids) <= 8:
        return "[" + ", ".join(map(str, ids)) + "]"
    return f"[{ids[0]}, {ids[1]}, ..., {ids[-1]}] ({len(ids)} samples)"


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else "(no message)"
    return text if len(text) <= 200 else text[:197] + "..."
