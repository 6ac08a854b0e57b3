"""Rewards on a separate pool of ranks (`rollout.reward_ranks: K`).

Under torchrun with W ranks, ranks 0..W-K-1 train (the default process group and
megatron-core's groups span only them) and ranks W-K..W-1 only score rewards.
megatron-core builds its groups over the whole default world, so the pool cannot
be a subgroup of it: instead both parts share torchrun's rendezvous store, the
training ranks create their default group under one store prefix, and every rank
joins a separate gloo "reward link" under another. The link carries pickled
batches (videos on the CPU) from each training rank to its server and the scores
back; gloo works on every machine and the volume (decoded videos, once per batch)
is small next to a rollout.

Training rank t is served by pool rank W-K + t % K. `RemoteRewardRunner` has the
AsyncRewardRunner verbs (submit / collect / run_sync / close): submit hands the
batch to a sender thread and returns at once, so sampling continues while the pool
scores. Each server scores with its own AsyncRewardRunner (timeouts, failed
samples and error lines as on the training ranks), one batch at a time in arrival
order, and stops when every client it serves has said goodbye.
"""

from __future__ import annotations

import io
import os
import queue
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import List, Optional

import torch
import torch.distributed as dist

from ..checks import require
from .runner import AsyncRewardRunner, RewardResults

_GOODBYE, _SCORE = 0, 1
_HEADER_TAG = 0
_LINK_TIMEOUT = timedelta(hours=2)  # a server waits for the next batch through a whole training step


@dataclass
class RewardPool:
    link: dist.ProcessGroup  # gloo, every launched rank
    rank: int  # rank in the launch (torchrun's RANK)
    train_world: int
    size: int  # reward ranks K

    @property
    def is_server(self) -> bool:
        return self.rank >= self.train_world

    def server_of(self, train_rank: int) -> int:
        return self.train_world + train_rank % self.size

    def clients(self) -> List[int]:
        return [t for t in range(self.train_world) if self.server_of(t) == self.rank]


def initialize(reward_ranks: int, backend: Optional[str] = None) -> RewardPool:
    """Splits torchrun's world into training ranks and K reward ranks (see the module
    docstring); on training ranks the default process group is the training world."""
    require(not dist.is_initialized(),
            "rollout.reward_ranks: torch.distributed is already initialised; the reward pool must be set up "
            "first (run through `dancegrpo-hpc train` / `python -m dancegrpo_hpc.train`)")
    require("RANK" in os.environ and "WORLD_SIZE" in os.environ,
            f"rollout.reward_ranks={reward_ranks} needs a torchrun launch (RANK/WORLD_SIZE unset); "
            "launch with torchrun or set rollout.reward_ranks=0")
    store, rank, world = next(dist.rendezvous("env://"))
    require(world > reward_ranks,
            f"config: rollout.reward_ranks={reward_ranks} leaves no training rank in a world of {world}; "
            "launch more ranks or lower rollout.reward_ranks")
    train_world = world - reward_ranks
    link = dist.ProcessGroupGloo(dist.PrefixStore("dancegrpo/reward_link", store), rank, world, _LINK_TIMEOUT)
    pool = RewardPool(link, rank, train_world, reward_ranks)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not pool.is_server:
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend, store=dist.PrefixStore("dancegrpo/train", store), rank=rank,
                                world_size=train_world)
    return pool


# -- messages: an int64 header [kind, tag, nbytes] on tag 0, then the payload on `tag` ----

def _encode(obj) -> torch.Tensor:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def _decode(payload: torch.Tensor):
    return torch.load(io.BytesIO(payload.numpy().tobytes()), weights_only=True)


def _send(link, dst: int, kind: int, tag: int, obj=None) -> None:
    payload = _encode(obj) if obj is not None else torch.empty(0, dtype=torch.uint8)
    link.send([torch.tensor([kind, tag, payload.numel()], dtype=torch.int64)], dst, _HEADER_TAG).wait()
    if payload.numel():
        link.send([payload], dst, tag).wait()


def _recv_payload(link, src: int, tag: int, nbytes: int):
    payload = torch.empty(nbytes, dtype=torch.uint8)
    link.recv([payload], src, tag).wait()
    return _decode(payload)


def _recv_header(link, src: Optional[int] = None):
    header = torch.empty(3, dtype=torch.int64)
    if src is None:
        work = link.recv_anysource([header], _HEADER_TAG)
        work.wait()
        src = work._source_rank()
    else:
        link.recv([header], src, _HEADER_TAG).wait()
    kind, tag, nbytes = header.tolist()
    return src, kind, tag, nbytes


# -- training side ---------------------------------------------------------------------------

class RemoteRewardRunner:
    """AsyncRewardRunner's verbs, with the scoring done by this rank's pool server."""

    def __init__(self, pool: RewardPool, names: List[str]):
        """names: the configured rewards (a batch the link lost fails under every name)."""
        require(not pool.is_server, "RemoteRewardRunner: this rank is a reward server, not a training rank")
        self.pool, self.names = pool, list(names)
        self.server = pool.server_of(pool.rank)
        self._tag = 0
        self._jobs: "queue.Queue" = queue.Queue()
        self._results: List[RewardResults] = []
        self._pending = 0
        self._done = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._serve_queue, name="reward-pool-client", daemon=True)
        self._thread.start()

    def submit(self, videos: torch.Tensor, prompts, sample_ids, **conditioning) -> None:
        require(not self._closed, "RemoteRewardRunner.submit: the runner is closed")
        ids = sample_ids.tolist() if isinstance(sample_ids, torch.Tensor) else list(sample_ids)
        cond = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in conditioning.items()}
        batch = {"videos": videos.detach().cpu(), "prompts": list(prompts), "sample_ids": ids, "conditioning": cond}
        with self._done:
            self._pending += 1
        self._jobs.put(batch)

    def collect(self) -> RewardResults:
        with self._done:
            self._done.wait_for(lambda: self._pending == 0)
            results, self._results = self._results, []
        return _concat(results)

    def run_sync(self, videos, prompts, sample_ids=None, **conditioning) -> RewardResults:
        self.submit(videos, prompts, list(range(len(prompts))) if sample_ids is None else sample_ids, **conditioning)
        return self.collect()

    def close(self) -> None:
        """Tells the server this client is done (after any batches still queued)."""
        if not self._closed:
            self._closed = True
            self._jobs.put(None)
            self._thread.join()

    def _serve_queue(self) -> None:
        link = self.pool.link
        while True:
            batch = self._jobs.get()
            if batch is None:
                _send(link, self.server, _GOODBYE, 0)
                return
            self._tag = self._tag % (1 << 30) + 1
            try:
                _send(link, self.server, _SCORE, self._tag, batch)
                _, kind, tag, nbytes = _recv_header(link, self.server)
                reply = _recv_payload(link, self.server, tag, nbytes)
                result = RewardResults(**reply) if isinstance(reply, dict) else self._failed(batch, str(reply))
            except Exception as exc:  # the link failed: the batch fails, training reports and goes on
                result = self._failed(batch, f"reward pool rank {self.server}: {type(exc).__name__}: {exc}")
            with self._done:
                self._results.append(result)
                self._pending -= 1
                self._done.notify_all()

    def _failed(self, batch, error: str) -> RewardResults:
        ids = batch["sample_ids"]
        line = error.strip().splitlines()[0] if error.strip() else "(no message)"
        return RewardResults(torch.tensor(ids, dtype=torch.int64),
                             {n: torch.full((len(ids),), float("nan")) for n in self.names},
                             torch.ones(len(ids), dtype=torch.bool), [f"all rewards: samples {ids}: {line}"])


def _concat(results: List[RewardResults]) -> RewardResults:
    if not results:
        return RewardResults(torch.empty(0, dtype=torch.int64), {}, torch.empty(0, dtype=torch.bool), [])
    names = list(dict.fromkeys(n for r in results for n in r.scores))
    scores = {n: torch.cat([r.scores.get(n, torch.full((len(r.sample_ids),), float("nan"))) for r in results])
              for n in names}
    return RewardResults(torch.cat([r.sample_ids for r in results]), scores,
                         torch.cat([r.failed for r in results]), [e for r in results for e in r.errors])


# -- reward ranks ----------------------------------------------------------------------------

def serve(pool: RewardPool, runner: AsyncRewardRunner) -> int:
    """Scores batches for this server's clients until each has said goodbye; returns
    the number of batches scored."""
    require(pool.is_server, "serve: this rank trains; only ranks >= the training world serve rewards")
    waiting = set(pool.clients())
    scored = 0
    while waiting:
        src, kind, tag, nbytes = _recv_header(pool.link)
        if kind == _GOODBYE:
            waiting.discard(src)
            continue
        batch = _recv_payload(pool.link, src, tag, nbytes)
        try:
            res = runner.run_sync(batch["videos"], batch["prompts"], batch["sample_ids"], **batch["conditioning"])
            # a plain dict: the client's torch.load runs with weights_only
            reply = {"sample_ids": res.sample_ids, "scores": res.scores, "failed": res.failed, "errors": res.errors}
        except Exception as exc:  # a bad batch fails its samples on the client, the server goes on
            reply = f"{type(exc).__name__}: {exc}"
        _send(pool.link, src, _SCORE, tag, reply)
        scored += 1
    return scored
