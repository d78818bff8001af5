"""Where progress goes: quiet third-party log notes about situations fsnn handles itself (TFDS, orbax
log through absl), and whether stderr shows progress bars in place (a terminal or a notebook)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

__all__ = ["without_absl_notes", "shows_bars"]


@contextlib.contextmanager
def without_absl_notes(*prefixes: str) -> Iterator[None]:
    """Drop the absl log lines that start with one of ``prefixes`` while the block runs."""

    class Notes(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not str(record.msg).startswith(prefixes)

    logger, notes = logging.getLogger("absl"), Notes()
    logger.addFilter(notes)
    try:
        yield
    finally:
        logger.removeFilter(notes)


def shows_bars() -> bool:
    """Whether stderr redraws a progress bar in place: a terminal or a notebook, not a log file."""
    ipython = sys.modules.get("IPython")
    notebook = getattr(ipython.get_ipython() if ipython else None, "kernel", None) is not None
    return sys.stderr.isatty() or notebook
