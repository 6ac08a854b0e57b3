"""Spawns gloo ranks on this machine for distributed tests (run_ranks), and runs torchrun
jobs that a timeout or a kill takes down whole (start_job / finish_job).

Rendezvous without a port race: this process hosts the ranks' TCPStore on a port the
kernel picks and keeps bound until the ranks are done, and every rank connects to it as a
client (TORCHELASTIC_USE_AGENT_STORE, as torchrun's agent does). Probing for a free port
and handing it to rank 0 instead leaves a window in which a test running in parallel can
take the same port, and its ranks could then join ours."""

import io
import os
import queue as queue_module
import signal
import subprocess
import time
import traceback

import torch
import torch.multiprocessing as mp

ERROR_GRACE_S = 10  # after a rank fails, the others (likely blocked in a collective with it) get this long


def _entry(rank, world_size, port, fn, args, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1", TORCHELASTIC_USE_AGENT_STORE="True")
    import torch

    torch.set_num_threads(1)
    try:
        buffer = io.BytesIO()  # bytes, not tensors: shared-memory tensors vanish when this process exits
        torch.save(fn(rank, world_size, *args), buffer)
        queue.put((rank, "ok", buffer.getvalue()))
    except BaseException:  # report any failure to the parent, which raises it
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        from dancegrpo_hpc.distributed import parallel

        parallel.destroy()


def run_ranks(world_size, fn, *args, timeout=600):
    """Runs fn(rank, world_size, *args) in world_size spawned processes; returns the
    results in rank order. fn must be a module-level function (it is pickled). Fails
    with every rank's traceback when one raises, at once when one dies without a word
    (a crash or a kill), and after `timeout` seconds when they hang; a rank that fails
    leaves the others ERROR_GRACE_S to report before they are killed."""
    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", 0, None, True, wait_for_workers=False)  # port 0: the kernel picks, we keep it
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_entry, args=(r, world_size, store.port, fn, args, queue)) for r in range(world_size)]
    for p in procs:
        p.start()
    results, errors = {}, {}
    try:
        _collect(procs, queue, results, errors, timeout)
    finally:
        grace = ERROR_GRACE_S if errors else 30
        for p in procs:
            p.join(timeout=grace)
            if p.is_alive():
                p.kill()
                p.join()
        del store
    if errors:
        raise AssertionError("distributed ranks failed:\n" + "\n".join(f"rank {r}:\n{e}" for r, e in sorted(errors.items())))
    return [results[r] for r in range(world_size)]


def _collect(procs, queue, results, errors, timeout):
    """Reads each rank's report into results / errors until all have reported, one fails
    (then only what arrives within ERROR_GRACE_S), one dies silently, or timeout passes."""
    deadline = time.monotonic() + timeout
    while len(results) + len(errors) < len(procs):
        now = time.monotonic()
        if now > deadline:
            for r in range(len(procs)):
                if r not in results and r not in errors:
                    errors[r] = "no report: still running when another rank failed or the timeout ran out"
            return
        try:
            rank, status, value = queue.get(timeout=min(1.0, deadline - now) if deadline > now else 0.01)
        except queue_module.Empty:
            silent = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in results and
                      r not in errors]
            for r in silent:
                errors[r] = f"exited with code {procs[r].exitcode} without a report (crashed or killed)"
            if silent:
                deadline = min(deadline, time.monotonic() + ERROR_GRACE_S)
            continue
        if status == "ok":
            results[rank] = torch.load(io.BytesIO(value), weights_only=False)
        else:
            errors[rank] = value
            deadline = min(deadline, time.monotonic() + ERROR_GRACE_S)


def start_job(cmd, log_path, **popen_kwargs):
    """A subprocess (e.g. torchrun) in its own session, so a kill reaches the launcher and every
    rank; its output goes to log_path, a file: a pipe nobody reads would stall a chatty job."""
    with open(log_path, "w") as log:
        job = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **popen_kwargs)
    job.log_path = log_path
    return job


def job_output(job):
    with open(job.log_path) as f:
        return f.read()


def _descendants(pid: int) -> list:
    """Every living process below pid, read from /proc (children before grandchildren)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, frontier = [], [pid]
    while frontier:
        kids = [c for p in frontier for c in children.get(p, [])]
        found += kids
        frontier = kids
    return found


def kill_job(job):
    """kill -9 the launcher and every rank. torchrun starts each rank in a session of its own
    (torch.distributed.elastic's subprocess handler: start_new_session=True), so killing the
    launcher's process group alone left the ranks running, orphaned."""
    ranks = _descendants(job.pid)
    os.killpg(job.pid, signal.SIGKILL)
    for pid in ranks:
        for kill in (os.killpg, os.kill):  # a rank leads its own group; its children may not
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    job.wait()


def finish_job(job, timeout):
    """The job's output once it has exited; past timeout its whole session is killed (no rank
    outlives the test) and the test fails with the output so far."""
    try:
        job.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_job(job)
        raise AssertionError(f"job still running after {timeout} s, killed:\n{job_output(job)[-3000:]}")
    return job_output(job)
