"""tests/dist_utils.run_ranks, which every spawned-rank test stands on: the rendezvous port
stays held by the parent while the ranks run (no window for a parallel run to take it),
and a rank that fails or dies is reported, with the survivors not waited for."""

import os

import pytest
import torch

from dist_utils import run_ranks

pytestmark = pytest.mark.distributed


def _listeners(port):
    """Inodes of the sockets listening on a local TCP port (Linux /proc/net/tcp*)."""
    inodes = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
    return inodes


def _sockets_of(pid):
    fds = f"/proc/{pid}/fd"
    out = set()
    for fd in os.listdir(fds):
        try:
            out.add(os.readlink(os.path.join(fds, fd)))
        except OSError:  # closed meanwhile
            pass
    return out


def _who_listens(rank, world_size):
    import torch.distributed as dist

    dist.init_process_group("gloo")
    total = torch.ones(1)
    dist.all_reduce(total)
    port = int(os.environ["MASTER_PORT"])
    listeners = _listeners(port)
    return port, bool(listeners & _sockets_of(os.getppid())), bool(listeners & _sockets_of(os.getpid())), total.item()


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux /proc/net/tcp")
def test_the_rendezvous_port_is_held_by_the_parent_from_before_the_ranks_start():
    """The parent binds the port and keeps it (no probe-close-rebind window); no rank listens on it."""
    results = run_ranks(2, _who_listens)
    assert results[0][0] == results[1][0]
    assert [(parent, own) for _, parent, own, _ in results] == [(True, False), (True, False)]
    assert [total for *_, total in results] == [2.0, 2.0]


def _one_rank_fails(rank, world_size, how):
    import torch.distributed as dist

    dist.init_process_group("gloo")
    if rank == 1:
        if how == "raise":
            raise ValueError("rank one gives up")
        os._exit(3)  # dies without a report, as a segfault or an OOM kill would
    dist.barrier()  # rank 0 waits for a rank that never comes
    return "unreachable"


@pytest.mark.parametrize("how, message", [("raise", "ValueError: rank one gives up"),
                                          ("exit", "exited with code 3 without a report")])
def test_a_failing_rank_is_reported_and_the_others_are_not_awaited(how, message):
    with pytest.raises(AssertionError) as info:
        run_ranks(2, _one_rank_fails, how, timeout=3600)  # ends well before: the failure cuts the wait
    text = str(info.value)
    assert "rank 1:" in text and message in text
    assert "rank 0:" in text  # its barrier failed, or it was still waiting when the grace period ended
