"""fsnn.data.images: TF-free TFDS preparation from the original IDX files, offline, and encodings."""

import gzip
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import urllib.request

import numpy as np
import pytest

from fsnn.data import images as images_module
from fsnn.data.images import DataError, Images, encode_images, load_images, read_originals

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _raw(path):
    """Independent IDX decoding for the comparison (header fields read, not assumed)."""
    raw = gzip.decompress(path.read_bytes())
    magic = int.from_bytes(raw[:4], "big")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(magic & 0xFF)]
    return np.frombuffer(raw[4 + 4 * len(dims) :], np.uint8).reshape(dims)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("networking is disabled in this test")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_prepares_offline_without_tensorflow_and_keeps_the_original_order(mnist_prepared, shared_data_dir, no_network):
    splits = load_images("mnist", prepared_dir=mnist_prepared)  # read back: no data_dir needed any more
    assert "tensorflow" not in sys.modules
    train_images = _raw(shared_data_dir / "mnist" / "train-images-idx3-ubyte.gz")
    train_labels = _raw(shared_data_dir / "mnist" / "train-labels-idx1-ubyte.gz")
    test_images = _raw(shared_data_dir / "mnist" / "t10k-images-idx3-ubyte.gz")
    assert {k: len(v.labels) for k, v in splits.items()} == {"train": 50_000, "validation": 10_000, "test": 10_000}
    np.testing.assert_array_equal(splits["train"].images, train_images[:50_000])
    np.testing.assert_array_equal(splits["validation"].images, train_images[50_000:])
    np.testing.assert_array_equal(splits["validation"].labels, train_labels[50_000:])
    np.testing.assert_array_equal(splits["test"].images, test_images)
    assert splits["train"].labels.dtype == np.int32
    direct = read_originals("mnist", shared_data_dir)  # the TFDS-free reader gives the same splits
    assert list(direct) == list(splits)
    for name, split in splits.items():
        np.testing.assert_array_equal(direct[name].images, split.images)
        np.testing.assert_array_equal(direct[name].labels, split.labels)
        assert direct[name].labels.dtype == np.int32


def test_the_preparation_keeps_stdout_for_results_and_draws_no_bars_into_a_log(mnist_prepared):
    # `fsnn eval` prints its results as JSON on stdout: TFDS's messages printed there broke it on a first
    # preparation; its progress bars filled log files (stderr here is not a terminal, as in a batch job)
    printed = json.loads((mnist_prepared / "preparation-output.json").read_text())
    assert printed["stdout"] == ""
    assert "fsnn_mnist" in printed["stderr"]  # TFDS's messages, on stderr
    assert "examples/s" not in printed["stderr"] and "Generating" not in printed["stderr"]


def test_preparation_bars_show_where_they_redraw_unless_quiet(monkeypatch, capsys):
    from tensorflow_datasets.core.utils import tqdm_utils

    monkeypatch.setattr(images_module, "shows_bars", lambda: True)  # a terminal or a notebook
    shown = {}
    for quiet in (False, True):
        with images_module._preparing(quiet):
            shown[quiet] = tqdm_utils._active
            print("a TFDS message")
    assert shown == {False: True, True: False}
    assert tqdm_utils._active  # TFDS's own setting is back
    assert capsys.readouterr() == ("", "a TFDS message\n" * 2)


def test_read_arrays_are_kept_in_the_process_and_beside_the_prepared_files(
    mnist_prepared, shared_data_dir, tmp_path, monkeypatch, no_network
):
    version = "1.0.0"
    folder = tmp_path / "fsnn_mnist" / version  # a private copy (this test changes it), no saved arrays yet
    shutil.copytree(mnist_prepared / "fsnn_mnist" / version, folder)
    copy = folder.with_name(f"{version}.arrays.npz")
    decoded = []
    real_decode = images_module._decode
    monkeypatch.setattr(images_module, "_decode", lambda source: decoded.append(source) or real_decode(source))
    monkeypatch.setattr(images_module, "_READ", {})

    first = load_images("mnist", prepared_dir=tmp_path)  # through TFDS
    assert len(decoded) == 2 and copy.exists()
    expected = read_originals("mnist", shared_data_dir)
    again = load_images("mnist", prepared_dir=tmp_path)  # e.g. a notebook's second `load_data`
    for name, split in first.items():
        np.testing.assert_array_equal(split.images, expected[name].images)
        np.testing.assert_array_equal(split.labels, expected[name].labels)
        assert np.shares_memory(again[name].images, split.images) and np.shares_memory(again[name].labels, split.labels)
        with pytest.raises(ValueError, match="read-only"):
            again[name].images[0, 0, 0] = 1  # no caller can change what the next one gets

    def later_process():
        images_module._READ.clear()
        return load_images("mnist", prepared_dir=tmp_path)

    later = later_process()  # from the saved arrays: nothing decoded
    assert len(decoded) == 2
    for name, split in first.items():
        assert not np.shares_memory(later[name].images, split.images)
        np.testing.assert_array_equal(later[name].images, split.images)
        np.testing.assert_array_equal(later[name].labels, split.labels)
        assert later[name].labels.dtype == np.int32 and not later[name].images.flags.writeable

    # from here on TFDS "decodes" three marked images per split: what comes back shows the way taken
    marked = Images(np.full((3, 28, 28), 7, np.uint8), np.arange(3, dtype=np.int32))
    monkeypatch.setattr(images_module, "_decode", lambda source: decoded.append(source) or marked)
    os.utime(next(folder.glob("*-test.array_record*")))  # prepared again since: the saved arrays are stale
    assert len(later_process()["test"].labels) == 3 and len(decoded) == 4
    assert len(later_process()["test"].labels) == 3 and len(decoded) == 4  # and were saved again
    copy.write_bytes(copy.read_bytes()[:1000])  # truncated
    assert len(later_process()["test"].labels) == 3 and len(decoded) == 6
    saved = bytearray(copy.read_bytes())  # saved again; now one bit of the images flips
    saved[saved.index(bytes([7]) * 100) + 50] ^= 1
    copy.write_bytes(saved)
    assert len(later_process()["test"].labels) == 3 and len(decoded) == 8  # zip's CRC caught it

    killed, writing = (copy.with_name(f"{copy.name}.{pid}.tmp") for pid in (4001, 4002))
    killed.write_bytes(b"left by a writer killed long ago")
    os.utime(killed, (0, 0))
    writing.write_bytes(b"another process is writing this now")
    copy.unlink()
    assert len(later_process()["test"].labels) == 3 and len(decoded) == 10
    assert copy.exists() and not killed.exists() and writing.exists()  # only the stale one is removed
    writing.unlink()

    def refuse(*args, **kwargs):
        raise OSError("read-only file system")

    copy.unlink()
    monkeypatch.setattr(np, "savez", refuse)  # a folder it cannot write to: read, nothing left behind
    assert len(later_process()["test"].labels) == 3 and len(decoded) == 12
    assert sorted(p.name for p in folder.parent.iterdir()) == [version]


def test_without_files_or_network_it_fails_at_once_saying_where_to_put_the_files(tmp_path, no_network, monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(urllib.request, "getproxies", dict)  # whatever proxy this machine has
    with pytest.raises(DataError) as err:  # not TFDS's minutes of retries
        load_images("mnist", prepared_dir=tmp_path)
    message = str(err.value)
    assert "cannot download mnist: storage.googleapis.com is unreachable" in message
    where = "t10k-labels-idx1-ubyte.gz) into DIR/mnist/ and pass --data-dir DIR (or set FSNN_DATA_DIR=DIR)."
    assert message.endswith(where)
    assert not (tmp_path / "fsnn_mnist").exists()

    def refused(self, urls):
        raise ConnectionError("the proxy refused")

    # behind a proxy only the download can tell; its failure says the same
    monkeypatch.setattr(urllib.request, "getproxies", lambda: {"https": "http://proxy.invalid:3128"})
    monkeypatch.setattr(tfds.download.DownloadManager, "download", refused)
    with pytest.raises(DataError, match=r"downloading mnist from https://\S+ failed \(the proxy refused\)\.") as err:
        load_images("mnist", prepared_dir=tmp_path)
    assert str(err.value).endswith(where)


@pytest.fixture
def mnist_copy(tmp_path, shared_data_dir):
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copy(shared_data_dir / "mnist" / name, folder / name)
    return folder


@pytest.mark.parametrize("damage", ["missing", "truncated", "corrupt"])
def test_bad_files_give_one_clear_error_and_leave_nothing_prepared(
    tmp_path, mnist_copy, no_network, damage, monkeypatch, caplog
):
    scratch = tmp_path / "tmp"  # the process's temporary folder: nothing may be left in it
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    victim = mnist_copy / "t10k-labels-idx1-ubyte.gz"
    data = victim.read_bytes()
    if damage == "missing":
        victim.unlink()
    elif damage == "truncated":
        victim.write_bytes(data[: len(data) // 2])
    else:
        victim.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    prepared = tmp_path / "prepared"
    with pytest.raises(DataError) as err:
        load_images("mnist", data_dir=mnist_copy.parent, prepared_dir=prepared)
    message = str(err.value)
    assert str(victim) in message
    assert {"missing": "missing", "truncated": "bytes", "corrupt": "sha256"}[damage] in message
    assert "--data-dir" in message
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # (TFDS: "Variant folder ... has no")
    assert not (prepared / "fsnn_mnist" / "1.0.0").exists()  # nothing a later run would trust
    assert not list(scratch.iterdir())  # TFDS's empty GCS-metadata folders included
    with pytest.raises(DataError, match="t10k-labels"):  # the TFDS-free reader checks the same way
        read_originals("mnist", mnist_copy.parent)


def test_a_run_waits_for_a_preparation_in_progress_and_reads_it(tmp_path, mnist_prepared, no_network, monkeypatch):
    # Two runs started together on a fresh machine: the second used to prepare too and then fail on
    # TFDS's final rename. Now it waits for the first's lock and reads what the first wrote.
    from fsnn import locks

    prepared = tmp_path / "prepared"
    locked = locks.exclusive
    waiting = threading.Event()

    def exclusive(lock_file, **kwargs):
        waiting.set()
        return locked(lock_file, **kwargs)

    monkeypatch.setattr(locks, "exclusive", exclusive)
    outcome = {}

    def second_run():
        try:  # no originals where it looks: preparing again would raise DataError
            outcome["splits"] = load_images("mnist", data_dir=tmp_path / "no-originals", prepared_dir=prepared)
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = err

    with locked(prepared / "fsnn_mnist.lock"):  # the first run is preparing
        worker = threading.Thread(target=second_run)
        worker.start()
        assert waiting.wait(timeout=60), "the second run did not ask for the preparation lock"
        shutil.copytree(mnist_prepared / "fsnn_mnist", prepared / "fsnn_mnist")  # the first run is done
        assert worker.is_alive()  # it cannot get past the lock held here
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert "error" not in outcome, outcome.get("error")
    expected = load_images("mnist", prepared_dir=mnist_prepared)
    for name, split in expected.items():
        np.testing.assert_array_equal(outcome["splits"][name].labels, split.labels)


def test_fashion_files_are_checked_in_their_own_folder(tmp_path, mnist_copy, no_network):
    # MNIST files where Fashion-MNIST is expected: same names, wrong content -> rejected.
    shutil.copytree(mnist_copy, mnist_copy.parent / "fashion_mnist")
    with pytest.raises(DataError, match="fashion_mnist"):
        load_images("fashion_mnist", data_dir=mnist_copy.parent, prepared_dir=tmp_path / "prepared")


def test_unknown_dataset_is_named():
    with pytest.raises(ValueError, match="cifar"):
        load_images("cifar")
    with pytest.raises(ValueError, match="cifar"):
        read_originals("cifar", ".")


def test_encode_28_follows_the_paper_formula():
    images = np.zeros((2, 28, 28), np.uint8)
    images[0, 3, 4] = 255
    images[1] = 128
    times = encode_images(images, size=28)
    assert times.shape == (2, 784) and times.dtype == np.float32
    np.testing.assert_allclose(times[0, 3 * 28 + 4], 0.15 + 1.85 * (1 - 255 / 256), rtol=1e-6)
    np.testing.assert_allclose(times[0, 0], 2.0, rtol=1e-6)  # background spikes late (not silent) at 28 x 28
    np.testing.assert_allclose(times[1], 0.15 + 1.85 * 0.5, rtol=1e-6)


def test_encode_16_is_jax_image_resize_of_the_centre_crop():
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8) * (rng.random((40, 28, 28)) < 0.3)
    crop = jnp.asarray(images[:, 2:26, 2:26], jnp.float32) / 255.0
    small = np.asarray(jax.image.resize(crop, (40, 16, 16), "bilinear", antialias=True)).reshape(40, -1)
    small = np.clip(small, 0.0, 1.0)
    expected = np.where(small > 0, 0.15 + 1.85 * (1.0 - small), np.inf)
    times = encode_images(images, size=16)
    assert times.dtype == np.float32
    np.testing.assert_array_equal(np.isinf(times), np.isinf(expected))  # the same pixels are silent
    np.testing.assert_allclose(times[np.isfinite(times)], expected[np.isfinite(expected)], rtol=1e-6)


def test_encode_16_crops_resizes_and_silences_background():
    images = np.zeros((3, 28, 28), np.uint8)
    images[1] = 255
    images[2, :2, :] = 255  # only outside the centre crop
    images[2, 14, 14] = 255
    times = encode_images(images, size=16)
    assert times.shape == (3, 256)
    assert np.all(np.isinf(times[0]))  # blank image: every input silent
    np.testing.assert_allclose(times[1], 0.15, rtol=1e-6)  # full ink: every input at t_early
    row = times[2]
    assert 0 < np.isfinite(row).sum() <= 9  # the one centre pixel spreads to a few neighbours only
    finite = row[np.isfinite(row)]
    assert np.all((finite >= 0.15) & (finite < 2.0))
    with pytest.raises(ValueError, match="size"):
        encode_images(images, size=20)
    with pytest.raises(ValueError, match="28, 28"):
        encode_images(np.zeros((2, 16, 16), np.uint8))
    scaled = images / 255.0  # (encoded as almost blank: every pixel near t_late, or silent)
    for wrong, got in (
        (scaled, r"float64 values in \[0.0, 1.0\]"),
        (images.astype(int) * 2, r"int64 values in \[0, 510\]"),
    ):
        with pytest.raises(ValueError, match=f"^`images` must be pixel values 0..255 .*; got {got}. For images scaled"):
            encode_images(wrong, size=16)
    np.testing.assert_array_equal(encode_images(images.astype(np.int64), size=16), times)  # other integer types
    for t_early, t_late in ((2.0, 0.15), (0.5, 0.5), (-0.1, 2.0), (0.15, np.inf)):
        with pytest.raises(ValueError, match=r"0 <= `t_early` < `t_late` \(finite\)"):
            encode_images(images, t_early=t_early, t_late=t_late)
