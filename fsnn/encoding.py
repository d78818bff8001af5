"""Encoding of analog values as spike times (early = large value by default)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

__all__ = ["values_to_times", "add_input_noise"]


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
