"""Applied to a built model, outside the model code (torchtitan style)."""

from __future__ import annotations

import math

from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

from ...checks import require

WRAPPER_PREFIX = "_checkpoint_wrapped_module."


def apply_activation_checkpointing(model, fraction: float) -> int:
    """Selective activation checkpointing: wraps a `fraction` of the transformer blocks
    (dual- then single-stream, spread evenly) in non-reentrant checkpointing, so their
    activations are recomputed in backward instead of stored. Returns how many."""
    require(0.0 <= fraction <= 1.0, f"activation checkpointing: fraction must lie in [0, 1]; got {fraction}")
    blocks = [(model.transformer_blocks, i) for i in range(len(model.transformer_blocks))]
    blocks += [(model.single_transformer_blocks, i) for i in range(len(model.single_transformer_blocks))]
    wrapped = 0
    for index, (container, i) in enumerate(blocks):
        # block index chosen when the running count floor((index + 1) * fraction) steps up
        if math.floor((index + 1) * fraction) > math.floor(index * fraction):
            if not hasattr(container[i], "_checkpoint_wrapped_module"):
                container[i] = checkpoint_wrapper(container[i], checkpoint_impl=CheckpointImpl.NO_REENTRANT)
            wrapped += 1
    return wrapped


def parameter_name(name: str) -> str:
    """A parameter's name without checkpoint-wrapper prefixes (the name in checkpoints)."""
    return name.replace(WRAPPER_PREFIX, "")
