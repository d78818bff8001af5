"""Orbax checkpoints of the whole training state (parameters, optimizer, bump state, epoch)."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["save", "restore_latest", "latest_epoch"]

T = TypeVar("T")


def _manager(directory: Path) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(Path(directory).resolve(), options=options)


def save(directory: Path, state, step: int | None = None) -> None:
    """Save ``state`` under ``step`` (default: its epoch, ``state.epoch``); keeps the two latest."""
    step = int(state.epoch) if step is None else step
    with _manager(directory) as manager:
        if step not in manager.all_steps():
            manager.save(step, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()


def latest_epoch(directory: Path) -> int | None:
    with _manager(directory) as manager:
        return manager.latest_step()


def restore_latest(directory: Path, like: T) -> T:
    """The latest checkpoint, with the structure, shapes and dtypes of ``like``.

    Leaves whose ``like`` is an uncommitted array come back uncommitted too (orbax commits them to
    a device): a compiled program keys on commitment, and a resumed run should reuse the program
    the fresh state compiled, not compile it again.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    with _manager(directory) as manager:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory}; start without --resume.")
        restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def as_like(value, template):
        if isinstance(template, jax.Array) and not template.committed and value.is_fully_addressable:
            return jnp.asarray(np.asarray(value))
        return value

    return jax.tree.map(as_like, restored, like)
