"""Advisory file locks between fsnn processes (a dataset being prepared, a run directory in use)."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["exclusive"]


@contextlib.contextmanager
def exclusive(lock_file: Path, *, busy: Callable[[str], Exception] | None = None) -> Iterator[None]:
    """Holds an exclusive lock on ``lock_file`` (POSIX ``flock``; the file is created if missing).

    Waits while another process holds it, or with ``busy`` raises ``busy(pid)`` at once instead
    (``pid``: the holder's, which the file keeps, or ``"?"``). The lock ends with the process,
    however it ends. Without ``fcntl`` (Windows), or on a filesystem that cannot lock (a warning
    says so), nothing is locked.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy is not None else 0))
        except BlockingIOError:
            handle.seek(0)
            raise busy(handle.read().strip() or "?") from None
        except OSError as err:  # a filesystem without locks (some network mounts): go on unguarded
            warnings.warn(f"cannot lock {lock_file} ({err}); going on without the lock", stacklevel=3)
            yield
            return
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
