"""Runs the trainer on the tiny synthetic world in its own process (for the kill -9
resume tests): python tests/run_tiny_training.py OUTPUT_DIR ITERATIONS RESUME [PAUSE_AT]

PAUSE_AT (1-based iteration): after that iteration's rollout, before its update, each
rank writes OUTPUT_DIR/paused.rank<R> and sleeps, so the test kills it at a known point
inside the iteration instead of racing a running trainer."""

import os
import sys
import time

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from trainer_utils import TinyWorld, tiny_config  # noqa: E402

from dancegrpo_hpc.rl.trainer import Trainer  # noqa: E402


def pause_inside(trainer: Trainer, iteration: int, output_dir: str) -> None:
    update = trainer.update

    def paused(batch, adv, it, *args, **kwargs):
        if it + 1 == iteration:  # run_iteration counts from 0
            open(os.path.join(output_dir, f"paused.rank{trainer.topo.rank}"), "w").close()
            time.sleep(3600)  # until the test's kill -9
        return update(batch, adv, it, *args, **kwargs)

    trainer.update = paused


def main(output_dir: str, iterations: int, resume: str, pause_at: int = 0) -> None:
    config = tiny_config(output_dir, train={"iterations": iterations, "updates_per_rollout": 2})
    trainer = Trainer(config, resume=resume, world=TinyWorld())
    if pause_at:
        pause_inside(trainer, pause_at, output_dir)
    try:
        trainer.train()
    finally:
        trainer.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], *(int(a) for a in sys.argv[4:5]))
