"""Orbax checkpoints of the whole training state (parameters, optimizer, bump state, epoch).

Each checkpoint's folder also holds the sha256 of its files (`_DIGEST`, written once orbax has
committed it), so that a damaged checkpoint is found before orbax reads it: one clear error
instead of TensorStore's failures (or a silently changed weight in a resumed run); an intact one
whose shapes do not fit the run (a config changed by hand) is named as such, not as damaged. The run's
small files (config, metrics log, results) are replaced atomically too (`write_atomic`), and its
logs read back without a row that a killed writer cut off (`read_jsonl`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from fsnn.logs import without_absl_notes

__all__ = ["CheckpointError", "save", "restore_latest", "latest_epoch", "write_atomic", "read_jsonl"]

T = TypeVar("T")
_DIGEST = "fsnn_sha256.json"
_ATTEMPTS = 20  # reads of a folder that a run in progress keeps changing


class CheckpointError(RuntimeError):
    """A saved checkpoint cannot be read back; the message names it and the fix."""


class Interrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C (or SIGTERM under the command line) after the epochs done were
    saved: ``epoch`` is the last epoch checkpointed (0 when none is), ``saved`` says in words what is
    kept and how to go on."""

    def __init__(self, epoch: int, saved: str):
        super().__init__(saved)
        self.epoch, self.saved = epoch, saved


def _manager(directory: Path) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(Path(directory).resolve(), options=options)


def save(directory: Path, state: Any, step: int | None = None) -> None:
    """Save ``state`` under ``step`` (default: its epoch, ``state.epoch``); keeps the two latest."""
    step = int(state.epoch) if step is None else step
    with _manager(directory) as manager:
        if step in manager.all_steps():
            return
        manager.save(step, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()
    folder = Path(directory).resolve() / str(step)
    write_atomic(folder / _DIGEST, json.dumps(_digest(folder), indent=0))


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` at once (a temporary file renamed): however the process ends,
    readers and a later resume find the old file whole or the new one, never a truncated one."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:  # an interrupt or a full disk: the old file stays
        tmp.unlink(missing_ok=True)
        raise


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines log such as ``metrics.jsonl``. A last line without its newline is left
    out: its writer was killed in the middle of it (or is writing it now). Any other line that is not
    a JSON object is a `CheckpointError` that names it."""
    text = Path(path).read_text()
    rows = []
    for number, line in enumerate(text[: text.rfind("\n") + 1].splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            problem = None if isinstance(row, dict) else "not an object"
        except ValueError as err:
            problem = str(err)
        if problem:  # a line changed by hand
            raise CheckpointError(
                f"line {number} of {path} is not a row that fsnn wrote ({problem}); restore or delete that line "
                "(the run's checkpoints do not depend on it)."
            )
        rows.append(row)
    return rows


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file in a checkpoint's ``folder`` (by relative path), but the digest's own."""
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*"))
        if f.is_file() and not f.name.startswith(_DIGEST)
    }


def latest_epoch(directory: Path) -> int | None:
    with _manager(directory) as manager:
        return manager.latest_step()


def _step_folders(directory: Path) -> list[str]:
    """The names of ``directory``'s entries (committed steps and orbax's temporary folders)."""
    try:
        return sorted(p.name for p in Path(directory).iterdir())
    except FileNotFoundError:
        return []


def restore_latest(directory: Path, like: T) -> T:
    """The latest checkpoint, with the structure, shapes and dtypes of ``like``.

    Leaves whose ``like`` is an uncommitted array come back uncommitted too (orbax commits them to
    a device): a compiled program keys on commitment, and a resumed run should reuse the program
    the fresh state compiled, not compile it again.

    A run in progress may save a newer checkpoint and remove this one while it is read (``fsnn eval``
    of a live run): then the newer one is read, and only a checkpoint that fails to read while the
    folder stays unchanged is reported as damaged.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    if not Path(directory).is_dir():  # (the manager would create it)
        raise _none_saved(directory)
    for _ in range(_ATTEMPTS):
        before = _step_folders(directory)
        try:
            restored = _restore_latest(directory, abstract)
            break
        except Exception:
            if _step_folders(directory) == before:
                raise
    else:
        raise CheckpointError(
            f"the checkpoints in {directory} changed while being read, {_ATTEMPTS} times in a row: a run in "
            "progress saves them faster than they can be read; try again, or once it has ended."
        )

    def as_like(value, template):
        if isinstance(template, jax.Array) and not template.committed and value.is_fully_addressable:
            return jnp.asarray(np.asarray(value))
        return value

    return jax.tree.map(as_like, restored, like)


def _shape_mismatch(item: Path, abstract) -> str | None:
    """The first array whose shape in the checkpoint item ``item`` differs from ``abstract``'s, in words
    (``None`` when all fit, or when the item's metadata does not read: then the restore says why)."""

    def shapes(tree) -> dict[str, tuple[int, ...]]:
        leaves = jax.tree_util.tree_leaves_with_path(tree)
        return {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(leaf.shape) for path, leaf in leaves}

    try:
        with without_absl_notes("Metadata file does not exist"), ocp.StandardCheckpointer() as reader:
            saved = shapes(reader.metadata(item.resolve()).item_metadata)
    except Exception:  # damaged or older metadata
        return None
    wanted = shapes(abstract)
    return next((f"{k}: {saved[k]} saved, {v} now" for k, v in wanted.items() if saved.get(k, v) != v), None)


def _none_saved(directory: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"no checkpoint in {directory}: its run has saved none yet (runs save every `checkpoint_every` "
        "epochs, at their end and when interrupted after an epoch)."
    )


def _restore_latest(directory: Path, abstract):
    """One attempt of `restore_latest`: the latest step, its digest checked, restored as ``abstract``."""
    with _manager(directory) as manager:
        step = manager.latest_step()
        if step is None:
            raise _none_saved(directory)
        folder = Path(manager.directory) / str(step)
        before = [s for s in manager.all_steps() if s < step]
        fix = (
            f"delete {folder} to go on from the checkpoint before it (epoch {max(before)})"
            if before
            else f"no checkpoint before it is left: delete {directory} and train again (without --resume)"
        )

        def damaged(why: str) -> CheckpointError:
            return CheckpointError(f"the checkpoint of epoch {step} in {directory} is damaged ({why}); {fix}.")

        if (folder / _DIGEST).exists():  # checkpoints of older fsnn versions have none
            try:
                saved = json.loads((folder / _DIGEST).read_text())
            except ValueError as err:
                raise damaged(f"its {_DIGEST} does not read back: {err}") from err
            now = _digest(folder)
            changed = sorted(name for name in saved.keys() | now.keys() if saved.get(name) != now.get(name))
            if changed:
                raise damaged(f"{len(changed)} file(s) differ from when it was saved, e.g. {changed[0]}")
        mismatch = _shape_mismatch(folder / "default", abstract)
        if mismatch:  # an intact checkpoint of another network: deleting it would lose the trained weights
            raise CheckpointError(
                f"the checkpoint of epoch {step} in {directory} does not fit the run's config ({mismatch}): the "
                "config differs from the one it was saved with (config.json changed by hand?); put that config "
                "back, or train the new one into a new --workdir."
            )
        try:
            return manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as err:  # orbax and TensorStore raise many kinds for damaged files
            root = err
            while root.__cause__ is not None:
                root = root.__cause__
            raise damaged(str(root).strip().splitlines()[0][:300] or type(root).__name__) from err
