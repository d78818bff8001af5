"""The Yin-Yang dataset (Kriener, Göltz & Petrovici 2021), generated exactly from its seeds.

`yinyang_splits()` reproduces the published train / validation / test arrays bit for bit
(seeds 42 / 41 / 40, 5000 / 1000 / 1000 samples), so training needs no data files.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["Split", "yinyang", "yinyang_splits", "load_published_yinyang", "which_class"]

PUBLISHED = {"train": (5000, 42), "validation": (1000, 41), "test": (1000, 40)}
SPLIT_SIZES = {name: size for name, (size, _) in PUBLISHED.items()}


class Split(NamedTuple):
    """One split: ``samples [n, d]`` (float64) and ``labels [n]`` (int64)."""

    samples: np.ndarray
    labels: np.ndarray


def which_class(x: float, y: float, r_small: float = 0.1, r_big: float = 0.5) -> int:
    """0 = yin, 1 = yang, 2 = dot, for a point inside the big circle."""
    d_right = np.sqrt((x - 1.5 * r_big) ** 2 + (y - r_big) ** 2)
    d_left = np.sqrt((x - 0.5 * r_big) ** 2 + (y - r_big) ** 2)
    if d_right < r_small or d_left < r_small:
        return 2
    is_yang = d_right <= r_small or r_small < d_left <= 0.5 * r_big or (y > r_big and d_right > 0.5 * r_big)
    return int(is_yang)


def yinyang(size: int, seed: int, *, r_small: float = 0.1, r_big: float = 0.5) -> Split:
    """Generate ``size`` samples ``(x, y, 1 - x, 1 - y)`` with balanced classes by rejection."""
    if size < 0:
        raise ValueError(f"`size` must be >= 0; got {size}.")
    if not 0 < r_small < r_big / 2:  # the design; r_small = 0 or > 1.12 r_big left a class without area
        raise ValueError(f"the dots must fit their halves: 0 < `r_small` < `r_big` / 2; got {r_small}, {r_big}.")
    rng = np.random.RandomState(seed)
    samples = np.empty((size, 4))
    labels = np.empty(size, np.int64)
    for n in range(size):
        goal = rng.randint(3)
        while True:
            x, y = rng.rand(2) * 2.0 * r_big
            if np.sqrt((x - r_big) ** 2 + (y - r_big) ** 2) > r_big:
                continue
            c = which_class(x, y, r_small, r_big)
            if c == goal:
                break
        samples[n] = (x, y, 1.0 - x, 1.0 - y)
        labels[n] = c
    return Split(samples, labels)


def yinyang_splits(sizes: dict[str, int] | None = None) -> dict[str, Split]:
    """The published splits (or the first ``sizes[name]`` samples of those named, for smoke runs)."""
    unknown = set(sizes or ()) - set(PUBLISHED)
    if unknown:
        raise ValueError(f"`sizes` names unknown splits {sorted(unknown)}; the splits are {list(PUBLISHED)}.")
    for name, n in (sizes or {}).items():
        if not (isinstance(n, numbers.Integral) and 0 <= n <= SPLIT_SIZES[name]):  # (was cut to fit)
            raise ValueError(f"`sizes[{name!r}]` must be a whole number in 0..{SPLIT_SIZES[name]}; got {n!r}.")
    return {name: yinyang((sizes or {}).get(name, size), seed) for name, (size, seed) in PUBLISHED.items()}


def load_published_yinyang(directory: str | Path) -> dict[str, Split]:
    """Read the published ``{split}_samples.npy`` / ``{split}_labels.npy`` arrays."""
    directory = Path(directory)
    out = {}
    for name in PUBLISHED:
        files = [directory / f"{name}_samples.npy", directory / f"{name}_labels.npy"]
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(
                    f"Yin-Yang file {f} is missing. Point to the folder with the published arrays "
                    "(e.g. $FSNN_DATA_DIR/yinyang), or use `yinyang_splits()`, which needs no files."
                )
        try:
            samples, labels = (np.load(f) for f in files)
            problem = None
            if samples.ndim != 2 or samples.shape[1:] != (4,) or labels.shape != samples.shape[:1]:
                problem = f"shapes {samples.shape} and {labels.shape}, not [n, 4] and [n]"
            elif not np.isin(labels, (0, 1, 2)).all():
                problem = "labels outside 0, 1, 2"
        except (OSError, ValueError, EOFError) as err:  # not an array file, or a cut-off one
            problem = str(err)
        if problem:
            raise ValueError(
                f"Yin-Yang files {files[0].name} / {files[1].name} in {directory} are damaged ({problem}); "
                "restore them (their sha256 are in SHA256SUMS of the shared data), or use `yinyang_splits()`, "
                "which needs no files."
            )
        out[name] = Split(samples, labels)
    return out
