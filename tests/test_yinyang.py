"""fsnn.data.yinyang: the generator reproduces the published arrays bit for bit."""

import numpy as np
import pytest

from fsnn.data import load_published_yinyang, yinyang, yinyang_splits


def test_generator_reproduces_published_arrays(shared_data_dir):
    published = load_published_yinyang(shared_data_dir / "yinyang")
    generated = yinyang_splits()
    for name in ("train", "validation", "test"):
        np.testing.assert_array_equal(generated[name].samples, published[name].samples)
        np.testing.assert_array_equal(generated[name].labels, published[name].labels)
    counts = np.bincount(generated["train"].labels)
    assert counts.min() > 1500  # balanced classes by rejection sampling


def test_small_splits_are_prefixes():
    small = yinyang_splits({"train": 10, "validation": 5, "test": 5})
    assert small["train"].samples.shape == (10, 4)
    np.testing.assert_array_equal(small["train"].samples, yinyang(10, 42).samples)
    np.testing.assert_allclose(small["test"].samples[:, :2] + small["test"].samples[:, 2:], 1.0)


def test_missing_files_say_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_samples.npy is missing"):
        load_published_yinyang(tmp_path)
    with pytest.raises(ValueError, match="`size`"):
        yinyang(-1, 0)


@pytest.mark.parametrize("damage", ["cut", "labels", "shape"])
def test_damaged_published_files_say_so(shared_data_dir, tmp_path, damage):
    """(A cut file was numpy's own error about pickles; wrong arrays were returned as they stood.)"""
    import shutil

    for f in (shared_data_dir / "yinyang").glob("*.npy"):
        shutil.copy(f, tmp_path / f.name)
    if damage == "cut":
        path = tmp_path / "validation_samples.npy"
        path.write_bytes(path.read_bytes()[:100])
    else:
        name, array = (
            ("validation_labels.npy", np.full(1000, 3))
            if damage == "labels"
            else ("validation_samples.npy", np.zeros((1000, 2)))
        )
        np.save(tmp_path / name, array)
    with pytest.raises(
        ValueError, match=r"^Yin-Yang files validation_samples.npy / validation_labels.npy in .* are damaged"
    ):
        load_published_yinyang(tmp_path)


@pytest.mark.parametrize("r_small", [0.0, 0.25, 0.6])
def test_radii_without_room_for_every_class_are_refused(r_small):
    """The dots lie inside their halves; with 0 or 0.6 a class has no area and sampling never ended."""
    with pytest.raises(ValueError, match=r"0 < `r_small` < `r_big` / 2; got"):
        yinyang(5, 0, r_small=r_small)


def test_an_unknown_split_name_is_refused():
    with pytest.raises(
        ValueError, match=r"unknown splits \['trian'\]; the splits are \['train', 'validation', 'test'\]"
    ):
        yinyang_splits({"trian": 10})


@pytest.mark.parametrize("size", [1001, 2.5, -1])
def test_a_split_size_it_cannot_give_is_refused(size):
    # 1001 gave the 1000 there are and 2.5 gave 2, without a word
    with pytest.raises(ValueError, match=rf"`sizes\['test'\]` must be a whole number in 0..1000; got {size}\."):
        yinyang_splits({"test": size})
