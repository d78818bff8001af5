"""Encoding of analog values as spike times (early = large value by default), and training-input
perturbations (noise, image translations and mirror images)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

__all__ = ["values_to_times", "add_input_noise", "shift_image", "flip_image"]


def values_to_times(
    values: Float[ArrayLike, "*shape"], *, t_early: float = 0.15, t_late: float = 2.0
) -> Float[Array, "*shape"]:
    r"""Linear latency code ``t = t_early + v (t_late - t_early)`` for ``v`` in [0, 1].

    This is the Yin-Yang encoding of Göltz et al. (2021): value 0 spikes at ``t_early``, value 1 at
    ``t_late``. (Image encodings that invert the pixel first live in `fsnn.data`.)
    """
    values = jnp.asarray(values)
    return t_early + values * (t_late - t_early)


def add_input_noise(
    key: jax.Array, times: Float[Array, "*shape"], sigma: float | Float[Array, ""]
) -> Float[Array, "*shape"]:
    """Gaussian jitter for training inputs: negative results are reflected (t -> -t), silent stays silent."""
    noisy = jnp.abs(times + sigma * jax.random.normal(key, times.shape, times.dtype))
    return jnp.where(jnp.isfinite(times), noisy, times)


def shift_image(image: Float[Array, " pixels"], shift: Int[ArrayLike, " 2"], side: int) -> Float[Array, " pixels"]:
    """A square image of spike times (``side x side``, flattened) translated by whole pixels.

    ``shift = (dy, dx)`` moves the content ``dy`` rows down and ``dx`` columns right; the uncovered
    border takes the image's latest spike time (``inf`` if any pixel is silent), which is the
    background (a dark pixel) in the image encodings of `fsnn.data`. One sample; vmap for batches.

    Example:
        >>> shift_image(jnp.array([0.5, 0.25, 0.75, 2.0]), jnp.array([0, 1]), side=2).tolist()
        [2.0, 0.5, 2.0, 0.75]
    """
    image, shift = _square(image, side), jnp.asarray(shift)
    if shift.shape != (2,) or not jnp.issubdtype(shift.dtype, jnp.integer):
        raise ValueError(f"`shift` must be two whole pixel counts (dy, dx); got {shift.dtype} {shift.shape}.")
    rows = jnp.arange(side)[:, None] - shift[0]
    cols = jnp.arange(side)[None, :] - shift[1]
    inside = (rows >= 0) & (rows < side) & (cols >= 0) & (cols < side)
    source = jnp.clip(rows, 0, side - 1) * side + jnp.clip(cols, 0, side - 1)
    return jnp.where(inside.ravel(), image[source.ravel()], jnp.max(image))


def flip_image(image: Float[Array, " pixels"], flip: Bool[ArrayLike, ""], side: int) -> Float[Array, " pixels"]:
    """A square image of spike times (``side x side``, flattened), mirrored left to right where ``flip``.

    One sample; vmap for batches.

    Example:
        >>> flip_image(jnp.array([0.5, 0.25, 0.75, 2.0]), True, side=2).tolist()
        [0.25, 0.5, 2.0, 0.75]
    """
    image = _square(image, side)
    mirrored = image.reshape(side, side)[:, ::-1].ravel()
    return jnp.where(flip, mirrored, image)


def _square(image: ArrayLike, side: int) -> Array:
    """``image`` as an array, which must be one flattened ``side x side`` image."""
    image = jnp.asarray(image)
    if image.shape != (side * side,):
        raise ValueError(
            f"`image` must be one flattened {side} x {side} image, shape ({side * side},); got {image.shape}."
        )
    return image
