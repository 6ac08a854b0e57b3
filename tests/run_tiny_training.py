"""Runs the trainer on the tiny synthetic world in its own process (for the kill -9
resume test): python tests/run_tiny_training.py OUTPUT_DIR ITERATIONS RESUME"""

import os
import sys

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from trainer_utils import TinyWorld, tiny_config  # noqa: E402

from dancegrpo_hpc.rl.trainer import Trainer  # noqa: E402


def main(output_dir: str, iterations: int, resume: str) -> None:
    config = tiny_config(output_dir, train={"iterations": iterations, "updates_per_rollout": 2})
    trainer = Trainer(config, resume=resume, world=TinyWorld())
    try:
        trainer.train()
    finally:
        trainer.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
