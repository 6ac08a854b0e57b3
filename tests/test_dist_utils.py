"""tests/dist_utils.run_ranks, which every spawned-rank test stands on: the rendezvous port
stays held by the parent while the ranks run (no window for a parallel run to take it),
and a rank that fails or dies is reported, with the survivors not waited for."""

import os
import time

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


def test_kill_job_kills_the_ranks_torchrun_starts_in_their_own_sessions(tmp_path):
    """kill_job must leave no rank behind: torchrun puts every rank in a new session, so the
    launcher's process group does not hold them (the kill -9 resume tests left paused ranks)."""
    import sys
    import textwrap

    from dist_utils import _descendants, kill_job, start_job

    script = tmp_path / "sleeper.py"
    script.write_text(textwrap.dedent(f"""
        import os, time
        open(os.path.join({str(tmp_path)!r}, "rank" + os.environ["RANK"]), "w").write(str(os.getpid()))
        time.sleep(600)
    """))
    job = start_job([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                     str(script)], str(tmp_path / "job.log"))
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"rank{r}").exists() for r in range(2)):
        assert job.poll() is None and time.monotonic() < deadline, (tmp_path / "job.log").read_text()[-2000:]
        time.sleep(0.05)
    ranks = [int((tmp_path / f"rank{r}").read_text()) for r in range(2)]
    assert set(ranks) <= set(_descendants(job.pid))
    assert all(os.getsid(pid) != os.getsid(job.pid) for pid in ranks)  # why killpg alone missed them
    kill_job(job)
    deadline = time.monotonic() + 30
    while any(os.path.exists(f"/proc/{pid}") and _state(pid) != "Z" for pid in ranks):
        assert time.monotonic() < deadline, "a rank outlived kill_job"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
