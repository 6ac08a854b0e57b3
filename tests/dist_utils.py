"""Spawns gloo ranks on this machine for distributed tests."""

import io
import os
import socket
import traceback

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world_size, port, fn, args, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
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
    results in rank order. fn must be a module-level function (it is pickled)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(r, world_size, port, fn, args, queue)) for r in range(world_size)]
    for p in procs:
        p.start()
    results, errors = {}, []
    try:
        for _ in range(world_size):
            rank, status, value = queue.get(timeout=timeout)
            if status == "ok":
                results[rank] = torch.load(io.BytesIO(value), weights_only=False)
            else:
                errors.append(f"rank {rank}:\n{value}")
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    if errors:
        raise AssertionError("distributed ranks failed:\n" + "\n".join(errors))
    return [results[r] for r in range(world_size)]
