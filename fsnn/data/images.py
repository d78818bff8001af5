"""MNIST and Fashion-MNIST through tensorflow-datasets, without TensorFlow, and their spike encodings.

TFDS's own ``mnist`` builders extract the gzip files with TensorFlow. The builders here read the
original IDX files with Python's `gzip`, write TFDS ``array_record`` files once and read them back
through TFDS's random-access data source, so neither preparing nor reading imports TensorFlow.

Where the originals come from (first match wins):

1. ``data_dir/<name>/`` — a folder holding the four ``.gz`` files of one dataset (the layout of
   ``../shared/data``: ``DIR/mnist/``, ``DIR/fashion_mnist/``). ``data_dir`` is the ``--data-dir``
   option or the ``FSNN_DATA_DIR`` environment variable. Nothing is downloaded then.
2. Otherwise TFDS downloads them into ``prepared_dir/downloads/<name>/`` (one folder per dataset:
   the file names collide).

Every file's size and sha256 are checked before anything is prepared; TFDS writes into an
``incomplete.*`` folder and renames it only when all splits are written, so a failed preparation
leaves nothing a later run would trust; runs started together prepare it once (a file lock in
``prepared_dir``: the others wait and read what the first wrote). The prepared arrays live in
``prepared_dir`` (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``), with a plain NumPy copy of the
decoded splits beside them for fast reading (``fsnn_<name>/<version>.arrays.npz``; rebuilt from the
TFDS files whenever it is missing, stale or damaged).

Splits (Göltz et al. 2021): train = the first 50 000 training images, validation = the last 10 000,
test = the 10 000 test images.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import gzip
import hashlib
import json
import os
import socket
import sys
import time
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fsnn import locks
from fsnn.logs import shows_bars, without_absl_notes

__all__ = ["DataError", "IMAGE_DATASETS", "load_images", "read_originals", "encode_images", "data_dir_from_env"]

# name: (download URL base, {file: (size in bytes, sha256)}); the values TFDS records for its builders.
_SOURCES = {
    "mnist": (
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        {
            "train-images-idx3-ubyte.gz": (
                9912422,
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            ),
            "train-labels-idx1-ubyte.gz": (
                28881,
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            ),
            "t10k-images-idx3-ubyte.gz": (
                1648877,
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            ),
            "t10k-labels-idx1-ubyte.gz": (
                4542,
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            ),
        },
    ),
    "fashion_mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {
            "train-images-idx3-ubyte.gz": (
                26421880,
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            ),
            "train-labels-idx1-ubyte.gz": (
                29515,
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            ),
            "t10k-images-idx3-ubyte.gz": (
                4422102,
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            ),
            "t10k-labels-idx1-ubyte.gz": (
                5148,
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            ),
        },
    ),
}
IMAGE_DATASETS = tuple(_SOURCES)
N_TRAIN = 50_000  # the rest of the 60 000 training images is the validation split
SPLIT_SIZES = {"train": N_TRAIN, "validation": 60_000 - N_TRAIN, "test": 10_000}  # MNIST and Fashion-MNIST


class DataError(RuntimeError):
    """A data file is missing, truncated or corrupt; the message names the file and the fix."""


class Images(NamedTuple):
    """One split: ``images [n, 28, 28]`` uint8 and ``labels [n]`` int32."""

    images: np.ndarray
    labels: np.ndarray


_READ: dict[tuple, dict[str, Images]] = {}  # what `_read_prepared` read, by folder and its files' stamp
_MAX_READ = 2
_CONNECT_SECONDS = 10  # to the download host, before TFDS's own (slow) retries
_STALE_TMP_SECONDS = 600  # a temporary copy untouched this long was left by a killed writer
_ENCODE_CHUNK = 4096  # images per step of `encode_images`


def data_dir_from_env() -> Path | None:
    """``$FSNN_DATA_DIR`` as a path, or ``None`` when unset."""
    value = os.environ.get("FSNN_DATA_DIR")
    return Path(value) if value else None


def _check_file(path: Path, size: int, sha256: str, fix: str) -> None:
    if not path.is_file():
        raise DataError(f"missing data file {path}. {fix}")
    actual = path.stat().st_size
    if actual != size:
        raise DataError(f"data file {path} has {actual} bytes, expected {size} (truncated or wrong file). {fix}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise DataError(f"data file {path} has sha256 {digest}, expected {sha256} (corrupt or wrong file). {fix}")


def _read_idx(path: Path, kind: str) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    if kind == "images":
        n, rows, cols = np.frombuffer(raw, ">i4", 3, offset=4)
        return np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows, cols)
    return np.frombuffer(raw, np.uint8, offset=8)


def _builder_class(name: str):
    """The TF-free TFDS builder of dataset ``name`` (built lazily: importing TFDS takes seconds).

    Its TFDS name (the folder under ``prepared_dir``) is ``fsnn_<name>``; it is not put in TFDS's
    global registry.
    """
    import tensorflow_datasets as tfds

    class LocalInfo(tfds.core.DatasetInfo):
        def initialize_from_bucket(self) -> None:
            """Nothing: these builders have no metadata on TFDS's GCS bucket (TFDS's own method would
            leave an empty ``/tmp/tmp*tfds`` folder behind on every builder constructed unprepared)."""

    class IdxImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """An IDX image dataset (MNIST layout) written as array_record by TFDS, without TensorFlow."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "Original IDX files, original order kept in the `index` feature."}

        def __init__(self, *, files: dict[str, Path], **kwargs):
            self._files = files
            super().__init__(**kwargs)

        def _info(self):
            return LocalInfo(
                builder=self,
                description=f"{name} from its original IDX files (fsnn, TensorFlow-free).",
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Tensor(shape=(28, 28), dtype=np.uint8),
                        "label": tfds.features.ClassLabel(num_classes=10),
                        "index": tfds.features.Scalar(dtype=np.int32),
                    }
                ),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            f = self._files
            return {
                "train": self._generate_examples(f["train-images-idx3-ubyte.gz"], f["train-labels-idx1-ubyte.gz"]),
                "test": self._generate_examples(f["t10k-images-idx3-ubyte.gz"], f["t10k-labels-idx1-ubyte.gz"]),
            }

        def _generate_examples(self, images_path, labels_path):
            images, labels = _read_idx(images_path, "images"), _read_idx(labels_path, "labels")
            for i in range(len(labels)):
                yield i, {"image": images[i], "label": int(labels[i]), "index": i}

    camel = "".join(part.capitalize() for part in name.split("_"))
    return type(f"Fsnn{camel}", (IdxImages,), {}, skip_registration=True)


def _local_originals(name: str, data_dir: Path) -> dict[str, Path]:
    """Checked paths of the four original files in ``data_dir/name``."""
    files = _SOURCES[name][1]
    folder = Path(data_dir) / name
    fix = (
        f"Put the original {name} files ({', '.join(files)}) in {folder}, or point --data-dir / "
        f"FSNN_DATA_DIR at a folder that holds {name}/ with them (unset it to download)."
    )
    for file, (size, sha) in files.items():
        _check_file(folder / file, size, sha, fix)
    return {file: folder / file for file in files}


def _locate_originals(name: str, data_dir: Path | None, prepared_dir: Path) -> dict[str, Path]:
    """Checked paths of the four original files, from ``data_dir/name`` or downloaded."""
    if data_dir is not None:
        return _local_originals(name, data_dir)
    base_url, files = _SOURCES[name]
    offline = (
        f"Without internet: put the original files ({', '.join(files)}) into DIR/{name}/ and pass --data-dir DIR "
        "(or set FSNN_DATA_DIR=DIR)."
    )
    host = urllib.parse.urlsplit(base_url).hostname
    if "https" not in urllib.request.getproxies():  # through a proxy only the download itself can tell
        try:  # TFDS would retry an unreachable host for minutes
            socket.create_connection((host, 443), timeout=_CONNECT_SECONDS).close()
        except OSError as err:
            raise DataError(f"cannot download {name}: {host} is unreachable ({err}). {offline}") from None
    import tensorflow_datasets as tfds

    folder = prepared_dir / "downloads" / name
    manager = tfds.download.DownloadManager(download_dir=folder)
    try:
        paths = manager.download({file: base_url + file for file in files})
    except Exception as err:  # TFDS raises several kinds (requests', its own, OSError)
        raise DataError(f"downloading {name} from {base_url} failed ({err}). {offline}") from err
    fix = f"Delete {folder} and retry, or download the files yourself and pass --data-dir."
    for file, (size, sha) in files.items():
        _check_file(Path(paths[file]), size, sha, fix)
    return {file: Path(paths[file]) for file in files}


def load_images(
    name: str, *, data_dir: Path | str | None = None, prepared_dir: Path | str | None = None, quiet: bool = False
) -> dict[str, Images]:
    """Train / validation / test images of ``name`` (``"mnist"`` or ``"fashion_mnist"``), in original order.

    Prepares the TFDS array_record files on first use (from ``data_dir/name`` if given, else by
    download) and reads them back with TFDS's data source; TensorFlow is never imported. The arrays
    read are kept in the process and beside the prepared files (`_read_prepared`): later calls and
    later processes (a notebook's next ``load_data``, the next run) skip TFDS's slow decoding.

    The preparation's messages go to stderr (stdout carries results, such as ``fsnn eval``'s JSON),
    its progress bars only to a terminal or a notebook, and not at all when ``quiet``.
    """
    if name not in _SOURCES:
        raise ValueError(f"`name` must be one of {IMAGE_DATASETS}; got {name!r}.")
    prepared_dir = Path(prepared_dir or os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets")
    builder_cls = _builder_class(name)

    def builder_of(files: dict[str, Path]):
        return builder_cls(files=files, data_dir=str(prepared_dir), file_format="array_record")

    with without_absl_notes("Variant folder"):  # TFDS: "... has no dataset_info.json", i.e. not prepared yet
        builder = builder_of({})
        if not builder.is_prepared():
            with locks.exclusive(prepared_dir / f"{builder.name}.lock"):
                builder = builder_of({})
                if not builder.is_prepared():  # else another process prepared it while this one waited
                    with _preparing(quiet):  # (downloads included)
                        originals = _locate_originals(name, Path(data_dir) if data_dir else None, prepared_dir)
                        builder = builder_of(originals)
                        builder.download_and_prepare(download_config=_no_gcs())
    return _split(*_read_prepared(Path(builder.data_dir), builder.as_data_source))


def _read_prepared(folder: Path, data_source) -> tuple[Images, Images]:
    """Train and test split (read-only arrays, original order) of the prepared TFDS folder ``folder``.

    TFDS decodes every example in Python (≈ 7 s for MNIST on a small CPU), so the first read leaves
    the arrays beside the folder (``<folder>.arrays.npz``, stamped with its files' sizes and mtimes)
    and later processes load them from there; a process keeps what it read. A missing, stale or
    unreadable copy means reading through ``data_source()`` (TFDS) again; one that cannot be written
    (a read-only folder) is skipped.
    """
    stamp = json.dumps(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir()))
    key = (str(folder.resolve()), stamp)
    if key not in _READ:
        copy = folder.with_name(f"{folder.name}.arrays.npz")
        splits = _load_copy(copy, stamp)
        if splits is None:
            splits = {split: _decode(source) for split, source in data_source().items()}
            _save_copy(copy, stamp, splits)
        for split in splits.values():
            for array in split:
                array.flags.writeable = False  # shared by every later call in this process
        while len(_READ) >= _MAX_READ:
            _READ.pop(next(iter(_READ)))
        _READ[key] = splits
    return _READ[key]["train"], _READ[key]["test"]


def _decode(source) -> Images:
    """One split of a TFDS data source, in the original order (the ``index`` feature)."""
    rows = source.__getitems__(range(len(source)))
    order = np.argsort([r["index"] for r in rows])
    return Images(np.stack([rows[i]["image"] for i in order]), np.asarray([rows[i]["label"] for i in order], np.int32))


def _load_copy(path: Path, stamp: str) -> dict[str, Images] | None:
    """The splits saved by `_save_copy` if ``path`` holds them for ``stamp``, else ``None``."""
    try:
        with open(path, "rb") as f, np.load(f) as saved:  # closed here even when np.load fails
            if str(saved["stamp"]) != stamp:
                return None
            return {split: Images(saved[f"{split}_images"], saved[f"{split}_labels"]) for split in ("train", "test")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # missing, truncated, corrupt (CRC)
        return None


def _save_copy(path: Path, stamp: str, splits: dict[str, Images]) -> None:
    """Write ``splits`` to ``path`` atomically (a temporary file renamed); nothing if it cannot.

    Temporary files of writers killed mid-write (untouched for `_STALE_TMP_SECONDS`; a write takes
    well under a second) are removed first.
    """
    arrays = {f"{split}_{field}": a for split, images in splits.items() for field, a in images._asdict().items()}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    for old in path.parent.glob(f"{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):  # e.g. removed by another process meanwhile
            if time.time() - old.stat().st_mtime > _STALE_TMP_SECONDS:
                old.unlink()
    try:
        with open(tmp, "wb") as f:
            np.savez(f, stamp=np.asarray(stamp), **arrays)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def read_originals(name: str, data_dir: Path | str) -> dict[str, Images]:
    """The splits of `load_images` read straight from the checked IDX files in ``data_dir/name``.

    No TFDS and nothing written: for machines without tensorflow-datasets (e.g. a lent GPU
    machine running ``benchmarks/gpu_session.py``). `load_images` is the way in everywhere else.
    """
    if name not in _SOURCES:
        raise ValueError(f"`name` must be one of {IMAGE_DATASETS}; got {name!r}.")
    files = _local_originals(name, Path(data_dir))
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(files[f"{prefix}-images-idx3-ubyte.gz"], "images")
        labels = _read_idx(files[f"{prefix}-labels-idx1-ubyte.gz"], "labels").astype(np.int32)
        splits[split] = Images(images, labels)
    return _split(splits["train"], splits["test"])


def _split(train: Images, test: Images) -> dict[str, Images]:
    """Train (the first `N_TRAIN` training images), validation (the rest) and test."""
    return {
        "train": Images(train.images[:N_TRAIN], train.labels[:N_TRAIN]),
        "validation": Images(train.images[N_TRAIN:], train.labels[N_TRAIN:]),
        "test": test,
    }


@contextlib.contextmanager
def _preparing(quiet: bool) -> Iterator[None]:
    """TFDS prints to stdout and draws its bars into any stream; see `load_images`."""
    from tensorflow_datasets.core.utils import tqdm_utils

    was = getattr(tqdm_utils, "_active", True)
    tqdm_utils.display_progress_bar(not quiet and shows_bars())
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        tqdm_utils.display_progress_bar(was)


def _no_gcs():
    """Prepare from the original files only (never fetch TFDS's pre-built copy from GCS)."""
    import tensorflow_datasets as tfds

    return tfds.download.DownloadConfig(try_download_gcs=False)


def encode_images(images: np.ndarray, *, size: int = 28, t_early: float = 0.15, t_late: float = 2.0) -> np.ndarray:
    """Spike times ``[n, size * size]`` (float32) of uint8 images ``[n, 28, 28]`` (ink spikes early).

    ``size=28``: ``t = t_early + (t_late - t_early) (1 - p / 256)`` per pixel (every pixel spikes).
    ``size=16``: centre crop 24 x 24, bilinear resize (antialiased) to 16 x 16 of ``p / 255``, then
    ``t = t_early + (t_late - t_early) (1 - v)``; pure-background pixels (``v = 0``) are silent (``inf``).
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"`images` must have shape [n, 28, 28]; got {images.shape}.")
    if not np.issubdtype(images.dtype, np.integer) or images.size and not 0 <= images.min() <= images.max() <= 255:
        raise ValueError(
            f"`images` must be pixel values 0..255 (uint8, as in the MNIST files); got {images.dtype} values"
            + (f" in [{images.min()}, {images.max()}]" if images.size else "")
            + ". For images scaled to [0, 1], pass `np.round(images * 255).astype(np.uint8)`."
        )
    if size not in (16, 28):
        raise ValueError(f"`size` must be 28 or 16; got {size}.")
    if not 0 <= t_early < t_late < np.inf:
        raise ValueError(f"the code needs 0 <= `t_early` < `t_late` (finite); got {t_early}, {t_late}.")
    out = np.empty((len(images), size * size), np.float32)
    for start in range(0, len(images), _ENCODE_CHUNK):  # NumPy reuses its buffers: no new memory per step
        out[start : start + _ENCODE_CHUNK] = _encode(images[start : start + _ENCODE_CHUNK], size, t_early, t_late)
    return out


def _encode(images: np.ndarray, size: int, t_early: float, t_late: float) -> np.ndarray:
    """`encode_images` of one chunk ``[n, 28, 28]``."""
    n, span = len(images), t_late - t_early
    if size == 28:
        return t_early + span * (1.0 - images.reshape(n, -1).astype(np.float32) / 256.0)
    resize = _resize_24_to_16()
    crop = images[:, 2:26, 2:26].astype(np.float32) / np.float32(255.0)
    columns = (crop.reshape(n * 24, 24) @ resize.T).reshape(n, 24, 16)
    small = np.clip(resize @ columns, 0.0, 1.0).reshape(n, -1)
    return np.where(small > 0, t_early + span * (1.0 - small), np.inf)


@functools.cache
def _resize_24_to_16() -> np.ndarray:
    """``[16, 24]``: `jax.image.resize`'s antialiased bilinear resize of one axis from 24 to 16 samples.

    That resize is linear and separable, so an image is resized as ``R @ image @ R.T`` (two matrix
    products in NumPy: no compilation per batch shape; equal to ``jax.image.resize`` to rounding).
    """
    import jax
    import jax.numpy as jnp

    return np.asarray(jax.image.resize(jnp.eye(24, dtype=jnp.float32), (24, 16), "bilinear", antialias=True)).T
