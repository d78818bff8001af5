r"""Losses and decoding on output spike times (one sample; vmap for batches).

Göltz et al. (2021), eq. 8: with the label neuron :math:`n^*` and times in units of ``tau_s``,

.. math:: L = -\log \frac{e^{-T_{n^*}/\xi}}{\sum_n e^{-T_n/\xi}} + \alpha\, e^{T_{n^*}/\beta}

Silent outputs
(``T = inf``) contribute ``exp(-inf) = 0`` to the softmax; a sample whose label neuron is silent
gets the constant loss ``silent_loss`` and no gradient, as in the reference implementation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

__all__ = ["ttfs_cross_entropy", "mse_spike_time", "first_spike_decision", "is_correct"]


def _checked(times: Array, label: Array | None = None) -> tuple[Array, Array | None]:
    """One sample's output ``times`` and its ``label`` (checked where concrete: a label past the outputs
    would be clamped by JAX's indexing without a word)."""
    times = jnp.asarray(times)
    if times.ndim != 1:
        raise ValueError(
            f"`times` must be one sample's output spike times [n_out] (jax.vmap a batch); got {times.shape}."
        )
    if label is None:
        return times, None
    if np.ndim(label) or not jnp.issubdtype(jnp.result_type(label), jnp.integer):
        raise ValueError(f"`label` must be one integer; got {jnp.result_type(label)} {np.shape(label)}.")
    if not isinstance(label, jax.core.Tracer) and not 0 <= int(label) < times.shape[0]:
        raise ValueError(f"`label` must be an output neuron, 0..{times.shape[0] - 1}; got {int(label)}.")
    return times, jnp.asarray(label)


def ttfs_cross_entropy(
    times: Float[Array, " n_out"],
    label: Int[Array, ""],
    *,
    xi: float = 0.2,
    alpha: float = 0.005,
    beta: float = 1.0,
    silent_loss: float = 10.0,
) -> Float[Array, ""]:
    """Cross-entropy of ``softmax(-T / xi)`` plus ``alpha exp(T_label / beta)``."""
    times, label = _checked(times, label)
    for name, value, zero_ok in (("xi", xi, False), ("beta", beta, False), ("alpha", alpha, True)):
        if isinstance(value, jax.core.Tracer):  # (hypergradients)
            continue
        lowest = np.min(np.asarray(value))  # (np.min of a jax.Array would trace under a caller's jit)
        if not (lowest >= 0 if zero_ok else lowest > 0):  # xi = 0 gave nan, < 0 rewarded late label spikes
            raise ValueError(f"`{name}` must be {'>= 0' if zero_ok else '> 0'}; got {value}.")
    t_label = times[label]
    ok = jnp.isfinite(t_label)
    # Silent outputs get logit -inf (probability 0) without ever computing inf / xi, whose
    # derivative in xi would be inf * 0 = nan (hypergradients); if the label is silent, all-zero
    # stand-ins keep log_softmax away from nan and the result is replaced by the constant anyway.
    spikes = jnp.isfinite(times)
    logits = jnp.where(spikes, -jnp.where(spikes, times, 0.0) / xi, -jnp.inf)
    logits = jnp.where(ok, logits, 0.0)
    log_p = jax.nn.log_softmax(logits)[label]
    reg = alpha * jnp.exp(jnp.where(ok, t_label, 0.0) / beta)
    return jnp.where(ok, -log_p + reg, jnp.asarray(silent_loss, times.dtype))


def mse_spike_time(
    times: Float[Array, " n_out"],
    label: Int[Array, ""],
    *,
    t_correct: float = 1.5,
    t_wrong: float = 2.5,
    t_silent: float = 4.0,
) -> Float[Array, ""]:
    """Mean squared distance to target times (label early, others late); silent counts as ``t_silent``."""
    times, label = _checked(times, label)
    target = jnp.where(jnp.arange(times.shape[0], dtype=jnp.int32) == label.astype(jnp.int32), t_correct, t_wrong)
    target = target.astype(times.dtype)
    clipped = jnp.where(jnp.isfinite(times), times, t_silent)
    return jnp.mean((clipped - target) ** 2)


def first_spike_decision(times: Float[Array, " n_out"]) -> Int[Array, ""]:
    """Index of the first output spike; ``-1`` when all outputs are silent."""
    times, _ = _checked(times)
    return jnp.where(jnp.any(jnp.isfinite(times)), jnp.argmin(times).astype(jnp.int32), jnp.int32(-1))


def is_correct(times: Float[Array, " n_out"], label: Int[Array, ""]) -> Array:
    """Whether the first spike is the label neuron's (all silent counts as wrong)."""
    times, label = _checked(times, label)
    return first_spike_decision(times) == label.astype(jnp.int32)
