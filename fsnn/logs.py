"""Quiet third-party log notes about situations fsnn handles itself (TFDS, orbax log through absl)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

__all__ = ["without_absl_notes"]


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
