"""Which of its data rank's videos a GPU decodes and scores, and the group's scores put back together.

Why: the GPUs of a tensor x Ulysses group hold one model replica and sample the same videos
(the same final latents on every member). When every member decoded and scored all of them,
that work ran tp x ulysses times over: 8x in examples/hunyuan_t2v_64gpu.yaml, where the
calibrated perf model (docs/PERFORMANCE.md) put the replicated VAE decode at 288 of 635 s per
iteration on 64 x H800 (381 s split).

How: member i of the group's g members decodes and scores the data rank's rows i, i+g, i+2g, ...
Interleaved rather than in blocks, so that every rollout micro-batch of g samples or more gives
each member work and the rewards keep overlapping the sampling. After collect(), one
all_gather_object over the group hands every member the scores, failure flags and error lines
of all the rows, in row order: each rank then holds exactly what it held when it scored every
row itself (Trainer.advantages gathers over the data-parallel ranks from there). An error line
comes from the member that scored the failing samples, so each failure is reported once.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.distributed as dist

from ..rewards.runner import RewardResults


class RewardSplit:
    """The share of one member of a model-replica group (group None: one member, who scores everything)."""

    def __init__(self, group: Optional[dist.ProcessGroup] = None):
        self.group = group
        self.members = dist.get_world_size(group) if group is not None else 1
        self.member = dist.get_rank(group) if group is not None else 0

    @staticmethod
    def model_replica() -> "RewardSplit":
        """Over megatron-core's tensor x context (Ulysses) parallel group: the ranks that
        share one data-parallel rank's rollout."""
        from megatron.core import parallel_state as ps

        return RewardSplit(ps.get_tensor_and_context_parallel_group())

    def rows(self, start: int, stop: int) -> List[int]:
        """This member's rows among the data rank's rows start..stop-1 (a micro-batch)."""
        return member_rows(start, stop, self.member, self.members)

    def gather(self, results: RewardResults, sample_ids: Sequence[int], names: Sequence[str]) -> RewardResults:
        """This member's results -> those of every row, ordered as sample_ids (all the data
        rank's rows, in row order). A collective over the group."""
        return self.gather_many([results], [sample_ids], names)[0]

    def gather_many(self, results: List[Optional[RewardResults]], sample_ids: List[Sequence[int]],
                    names: Sequence[str]) -> List[RewardResults]:
        """gather for several rounds at once (the held-out evaluation: one per prompt), in one
        collective; None: this member had no rows in that round."""
        if self.members == 1:
            return list(results)
        mine = [None if r is None else (r.sample_ids, r.scores, r.failed, r.errors) for r in results]
        everyone = [None] * self.members
        dist.all_gather_object(everyone, mine, group=self.group)
        return [_merge([member[k] for member in everyone], list(ids), names) for k, ids in enumerate(sample_ids)]


def member_rows(start: int, stop: int, member: int, members: int) -> List[int]:
    """Rows r in start..stop-1 with r % members == member."""
    return list(range(start + (member - start) % members, stop, members))


def _merge(parts, sample_ids: List[int], names: Sequence[str]) -> RewardResults:
    """The members' (ids, scores, failed, errors) placed at their rows; every row exactly once."""
    position = {sid: k for k, sid in enumerate(sample_ids)}
    n = len(sample_ids)
    scores = {name: torch.full((n,), float("nan")) for name in names}
    failed = torch.zeros(n, dtype=torch.bool)
    covered = torch.zeros(n, dtype=torch.bool)
    errors: List[str] = []
    for member, part in enumerate(parts):
        if part is None:
            continue
        ids, member_scores, member_failed, member_errors = part
        ids = ids.tolist()
        unknown = [i for i in ids if i not in position]
        if unknown:
            raise RuntimeError(f"reward split: member {member} scored samples {unknown[:8]} outside this data rank's")
        at = torch.tensor([position[i] for i in ids], dtype=torch.long)
        if covered[at].any():
            raise RuntimeError(f"reward split: member {member} scored samples another member scored too")
        covered[at] = True
        for name in names:
            if name in member_scores:
                scores[name][at] = member_scores[name].float()
        failed[at] = member_failed
        errors.extend(member_errors)
    if not covered.all():
        missing = [sample_ids[k] for k in torch.nonzero(~covered).flatten().tolist()]
        raise RuntimeError(f"reward split: no member scored samples {missing[:8]} ({len(missing)} in all)")
    return RewardResults(torch.tensor(sample_ids, dtype=torch.int64), scores, failed, errors)
