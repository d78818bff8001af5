"""Remedies for silent neurons and exploding spike-time gradients (explicit, counted options).

* Weight bumping (Göltz et al. 2021, reference code): when too many neurons of a layer stay silent
  in a training batch, that batch takes no optimizer step; instead every incoming weight of the
  neurons that were silent for at least one sample grows by a bump, which doubles while the same
  layer keeps being bumped on consecutive batches. Only the first (lowest) offending layer is bumped.
* Gradient drop (`max_dw_norm`): per sample, the weight-gradient column of an output neuron whose
  largest entry exceeds a bound is zeroed before the sum over the batch. It acts on the weight
  gradient only, never on the error passed to the layer below (it is applied to per-sample
  weight gradients after backpropagation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

__all__ = ["BumpState", "bump_targets", "apply_bump", "drop_large_weight_grads", "MAX_DOUBLINGS"]

# The bump stops doubling at 2**MAX_DOUBLINGS times its initial value (≈ 10**6). Normal training
# never bumps one layer that often in a row; a layer that cannot fire at all (e.g. a chip whose
# weight range cannot reach threshold) would otherwise have its weights doubled to inf.
MAX_DOUBLINGS = 20


class BumpState(NamedTuple):
    """Bump magnitude used last and the layer it was used on (``-1``: the last batch had none)."""

    value: Float[Array, ""]
    layer: Int[Array, ""]

    @classmethod
    def initial(cls, value: float, dtype=jnp.float32) -> BumpState:
        return cls(jnp.asarray(value, dtype), jnp.asarray(-1, jnp.int32))


def bump_targets(
    layer_times: Sequence[Float[Array, "batch n"]],
    labels: Int[Array, " batch"],
    valid: Bool[Array, " batch"],
    max_missing: Sequence[float],
    *,
    output_criterion: str = "label",
    alive: Sequence[Bool[Array, " n"]] | None = None,
) -> tuple[Int[Array, ""], list[Bool[Array, " n"]]]:
    """Which layer to bump (``-1``: none) and, per layer, the neurons silent for some sample.

    Hidden layers compare the silent fraction of (sample, neuron) entries with ``max_missing``;
    the output layer does so too with ``output_criterion="all"``, while with ``"label"`` (the
    reference's setting) it counts samples whose label neuron is silent. Either way the targets are
    all neurons of the layer that were silent for at least one (valid) sample.

    ``alive`` (per layer; default all): the neurons that can fire at all. The others (dead neurons
    of a chip, `fsnn.substrate.alive_neurons`) are left out of the fractions and the targets, as
    no bump makes them fire (counted, they had every batch bumped and none trained once they
    outnumbered ``max_missing``); with ``"label"``, so are the samples whose label neuron is dead.
    """
    if output_criterion not in ("label", "all"):  # (anything else counted as "all")
        raise ValueError(f"`output_criterion` must be 'label' or 'all'; got {output_criterion!r}.")
    if len(max_missing) != len(layer_times):
        raise ValueError(f"`max_missing` needs one value per layer ({len(layer_times)}); got {len(max_missing)}.")
    n_valid = jnp.maximum(jnp.sum(valid), 1)
    chosen = jnp.asarray(-1, jnp.int32)
    targets = []
    for i, times in enumerate(layer_times):
        live = jnp.ones(times.shape[1], bool) if alive is None else alive[i]
        silent = ~jnp.isfinite(times) & valid[:, None] & live[None, :]
        if i == len(layer_times) - 1 and output_criterion == "label":
            label = jax.nn.one_hot(labels, times.shape[1], dtype=bool)
            label_silent = silent & label
            n_live = jnp.maximum(jnp.sum(valid & jnp.any(label & live[None, :], axis=1)), 1)
            fraction = jnp.sum(jnp.any(label_silent, axis=1)) / n_live
        else:
            fraction = jnp.sum(silent) / (n_valid * jnp.maximum(jnp.sum(live), 1))
        offends = fraction.astype(times.dtype) > max_missing[i]
        chosen = jnp.where((chosen < 0) & offends, i, chosen)
        targets.append(jnp.any(silent, axis=0))  # every neuron silent for some sample
    return chosen, targets


def apply_bump(
    kernels: Sequence[Float[Array, "n_in n_out"]],
    targets: Sequence[Bool[Array, " n_out"]],
    layer: Int[Array, ""],
    state: BumpState,
    initial_value: float,
) -> tuple[list[Array], BumpState]:
    """Add the bump to the incoming weights of the target neurons of ``layer`` (no-op for -1); it
    doubles while the same layer is bumped on consecutive calls, up to `MAX_DOUBLINGS` times."""
    doubled = jnp.minimum(2.0 * state.value, initial_value * 2.0**MAX_DOUBLINGS)
    value = jnp.where(layer == state.layer, doubled, initial_value).astype(state.value.dtype)
    out = []
    for i, (kernel, target) in enumerate(zip(kernels, targets)):
        add = jnp.where((layer == i) & target, value, 0.0).astype(kernel.dtype)
        out.append(kernel + add[None, :])
    new_state = BumpState(jnp.where(layer >= 0, value, initial_value).astype(state.value.dtype), layer)
    return out, new_state


def drop_large_weight_grads(
    per_sample: Float[Array, "batch n_in n_out"], max_norm: float
) -> tuple[Float[Array, "n_in n_out"], Int[Array, ""]]:
    """Zero each sample's gradient column whose largest |entry| exceeds ``max_norm``, then sum.

    ``per_sample`` are the per-sample weight gradients of the batch-mean loss (so their sum is the
    batch gradient). Returns the summed gradient and the number of dropped (sample, neuron) columns.
    """
    big = jnp.max(jnp.abs(per_sample), axis=1) > max_norm  # [batch, n_out]
    kept = jnp.where(big[:, None, :], 0.0, per_sample)
    return jnp.sum(kept, axis=0), jnp.sum(big).astype(jnp.int32)
