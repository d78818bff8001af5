"""fsnn.encoding."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsnn.encoding import add_input_noise, flip_image, shift_image, values_to_times


def test_values_to_times():
    np.testing.assert_allclose(values_to_times(jnp.array([0.0, 0.5, 1.0])), [0.15, 1.075, 2.0])
    assert values_to_times(jnp.zeros(2, jnp.float32)).dtype == jnp.float32


def test_noise_reflects_and_keeps_silence():
    times = jnp.array([0.01] * 1000 + [jnp.inf])
    noisy = add_input_noise(jax.random.key(0), times, 0.3)
    assert float(noisy[-1]) == np.inf
    assert float(noisy[:-1].min()) >= 0.0  # reflected, never negative
    assert 0.15 < float(jnp.std(noisy[:-1])) < 0.3  # folded normal


def test_shift_image_translates_and_fills_with_the_background():
    rng = np.random.default_rng(0)
    image = rng.uniform(0.15, 1.9, (5, 5))
    image[0, 0] = 2.0  # the background: the latest time of the image
    for dy, dx in [(0, 0), (1, -2), (-3, 4), (5, 0)]:
        expected = np.full((17, 17), 2.0)  # the image moved on a background canvas with a margin of 6
        expected[6 + dy : 11 + dy, 6 + dx : 11 + dx] = image
        out = shift_image(jnp.asarray(image.ravel()), jnp.array([dy, dx]), side=5)
        np.testing.assert_array_equal(np.asarray(out).reshape(5, 5), expected[6:11, 6:11])
    silent = jnp.where(jnp.arange(9) % 2 == 0, 0.5, jnp.inf)  # a silent background stays silent
    assert np.isinf(np.asarray(shift_image(silent, jnp.array([0, -1]), side=3))[2::3]).all()
    # (three numbers shifted by the first two without a word; floats and one number failed deep inside)
    for shift in (jnp.array([1, 1, 1]), jnp.array([0.5, 1.0]), 1):
        with pytest.raises(ValueError, match=r"^`shift` must be two whole pixel counts \(dy, dx\); got "):
            shift_image(silent, shift, side=3)


def test_flip_image_mirrors_rows_only_where_asked():
    image = np.random.default_rng(0).uniform(0.15, 2.0, (4, 4))
    flat = jnp.asarray(image.ravel())
    np.testing.assert_array_equal(np.asarray(flip_image(flat, True, side=4)).reshape(4, 4), image[:, ::-1])
    np.testing.assert_array_equal(np.asarray(flip_image(flat, False, side=4)), image.ravel())
    batch = jax.vmap(flip_image, (0, 0, None))(jnp.stack([flat, flat]), jnp.array([False, True]), 4)
    np.testing.assert_array_equal(np.asarray(batch[1]).reshape(4, 4), image[:, ::-1])


@pytest.mark.parametrize("flip", [False, True])
def test_an_image_of_another_side_is_refused(flip):
    """A 16 x 16 image with side=15: the shift returned 225 of its pixels, the flip a reshape error."""
    message = "`image` must be one flattened 15 x 15 image, shape (225,); got (256,)."
    with pytest.raises(ValueError, match=re.escape(message)):
        flip_image(jnp.ones(256), True, 15) if flip else shift_image(jnp.ones(256), jnp.array([1, 0]), 15)
