r"""A layer's spike times for a whole batch, with a batch-level backward pass (first-order training).

`fsnn.core.spike_time.layer_spike_times` is one sample's layer with a custom JVP: it composes with
everything (`jax.vmap`, forward and reverse mode, hypergradients, learned neuron parameters). Its
reverse pass under `jax.vmap`, and the per-sample weight gradients that the gradient drop of
Göltz et al. (2021) needs, make XLA build ``[batch, n_in, n_out]`` arrays several times per layer:
on CPU the larger part of an image network's training step.

`batch_spike_times` gives the same spike times and, for first-order gradients in the input times
and weights, the same gradients from one pass over the batch (implicit-function theorem at each
spike, as `layer_spike_times`):

.. math:: a_{bj} = \frac{\bar T_{bj}}{\max(V'_{bj}, \text{floor})},\quad
          \bar t_{bi} = \sum_j a_{bj} w_{ij} \kappa'_{bij} / C,\quad
          \bar w_{ij} = -\sum_b [\text{kept}_{bj}]\, a_{bj} \kappa_{bij} / C,

with the gradient drop folded in: sample ``b``'s column ``j`` of the weight gradient is left out
(and counted) when its largest entry, :math:`|a_{bj}| \max_i \kappa_{bij} / C`, exceeds
``max_dw_norm`` (`fsnn.remedies.drop_large_weight_grads`, without forming the per-sample
gradients). On CPU the backward pass is one native call (`fsnn.core.cpu_kernel.layer_vjp_native`:
no ``[batch, n_in, n_out]`` array; the work split over threads by samples, and for wide layers
the weight gradient by blocks of inputs); elsewhere, and under
`fsnn.core.spike_time.xla_search`, the same sums in XLA. With ``observed`` times (in-the-loop
training, `fsnn.substrate.network_on_substrate_batch`) the value is those times and the sums are
taken at them, as `fsnn.core.spike_time.spike_times_at` does per sample.

Limits: first order only (the backward pass is not differentiable again: hypergradients use
`layer_spike_times`), and gradients flow to ``input_times`` and ``weights`` only; asking for one
in a neuron parameter raises.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, ArrayLike, Float

from fsnn.core.neuron import LIFParams
from fsnn.core.spike_time import (
    Solver,
    _accelerator_visible,
    _checked,
    _forward,
    _kernels,
    _slope_floor,
    native_on_cpu,
)

__all__ = ["batch_spike_times"]


def batch_spike_times(
    input_times: Float[ArrayLike, "batch n_in"],
    weights: Float[ArrayLike, "n_in n_out"],
    params: LIFParams = LIFParams(),
    *,
    solver: Solver = "auto",
    max_dw_norm: float | Array | None = None,
    drop_counter: Float[ArrayLike, ""] = 0.0,
    observed: Float[ArrayLike, "batch n_out"] | None = None,
    min_slope: float | None = None,
) -> Float[Array, "batch n_out"]:
    """Spike times ``[batch, n_out]`` of a layer for a batch, with a batch-level gradient.

    Values equal ``jax.vmap(layer_spike_times, (0, None, None))(input_times, weights, params)``;
    so do the first-order gradients in ``input_times`` and ``weights`` when ``max_dw_norm`` is
    ``None``.

    Args:
        input_times, weights, params, solver: as `fsnn.core.spike_time.layer_spike_times`, with a
            leading batch axis on ``input_times``; ``params`` fields scalars (shared by the layer).
        max_dw_norm: the gradient drop: per sample, a neuron's column of the weight gradient whose
            largest ``|entry|`` exceeds this is left out of the sum (``None``: nothing dropped).
            The gradient passed to ``input_times`` is never changed.
        drop_counter: a scalar with no effect on the value; its gradient is the number of
            (sample, neuron) columns dropped (``jax.grad`` with respect to it reads the count).
        observed: spike times measured elsewhere (e.g. on `fsnn.substrate`): the value is then
            ``observed`` and the gradients are the layer's evaluated at those times, as
            `fsnn.core.spike_time.spike_times_at` under `jax.vmap` (in-the-loop training).
        min_slope: the slope floor of the implicit-function theorem in units of
            ``(theta - E_l) / tau_s`` (default ``sqrt(eps)``; `spike_times_at`).

    Example:
        >>> x, w = jnp.array([[0.0, 0.5], [0.2, 0.1]]), jnp.full((2, 3), 2.0)
        >>> batch_spike_times(x, w).shape
        (2, 3)
    """
    input_times = jnp.asarray(input_times)
    if input_times.ndim != 2:
        raise ValueError(f"`input_times` must have shape [batch, n_in]; got {input_times.shape}.")
    row = jnp.zeros(input_times.shape[1:], input_times.dtype)  # `_checked` validates one sample
    solver, _, weights, params = _checked(row, weights, params, solver)
    for name, value in zip(LIFParams._fields, params):
        if np.ndim(value) != 0:
            raise ValueError(f"`params.{name}` must be a scalar here; use layer_spike_times for per-neuron values.")
    dtype = weights.dtype
    input_times = jnp.where(jnp.isnan(input_times), jnp.inf, input_times.astype(dtype))
    if min_slope is not None and not min_slope > 0:
        raise ValueError(f"`min_slope` must be > 0 or None; got {min_slope}.")
    if observed is not None:
        observed = jax.lax.stop_gradient(jnp.asarray(observed, dtype))
        if observed.shape != (input_times.shape[0], weights.shape[1]):
            raise ValueError(
                f"`observed` must have shape [batch, n_out] = {[input_times.shape[0], weights.shape[1]]}; "
                f"got {list(observed.shape)}."
            )
    if input_times.shape[0] == 0 or input_times.shape[1] == 0:  # no samples, or no inputs: nothing fires
        return jnp.full((input_times.shape[0], weights.shape[1]), jnp.inf, dtype) if observed is None else observed
    max_norm = jnp.asarray(jnp.inf if max_dw_norm is None else max_dw_norm, dtype)
    counter = jnp.asarray(drop_counter, dtype)
    return _batch_spike_times(solver, min_slope, input_times, weights, params, max_norm, counter, observed)


def _primal(solver, input_times, weights, params):
    return jax.vmap(_forward, (None, 0, None, None))(solver, input_times, weights, params)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _batch_spike_times(solver, min_slope, input_times, weights, params, max_norm, drop_counter, observed):
    return _primal(solver, input_times, weights, params) if observed is None else observed


def _fwd(solver, min_slope, input_times, weights, params, max_norm, drop_counter, observed):
    moving = [k for k, p in zip(LIFParams._fields, params) if p.perturbed]
    if moving or max_norm.perturbed:
        raise ValueError(
            f"batch_spike_times gives gradients in `input_times` and `weights` only, not in "
            f"{moving or ['max_dw_norm']}; use layer_spike_times (under jax.vmap) for those."
        )
    params = LIFParams(*(p.value for p in params))
    times = _primal(solver, input_times.value, weights.value, params) if observed is None else observed.value
    return times, (input_times.value, weights.value, times, params, max_norm.value)


def _constants(solver: str, params: LIFParams, max_norm: Array, min_slope: float | None) -> Float[Array, " 5"]:
    """``(tau_m of the kernel, tau_s, C, slope floor, max_norm)`` (`_kernels`, `_spike_time_tangent`)."""
    tau_s = params.tau_s
    tau_m = {"lambertw": tau_s, "quadratic": 2.0 * tau_s}.get(solver, params.tau_m)
    floor = _slope_floor(params, max_norm.dtype, min_slope)
    return jnp.stack([tau_m, tau_s, params.capacitance, floor, max_norm]).astype(max_norm.dtype)


def _vjp_xla(solver, input_times, weights, times, cotangent, constants):
    """The batch's backward pass in XLA (the same sums as the native kernel)."""
    tau_m, tau_s, capacitance, floor, max_norm = (constants[k] for k in range(5))
    fired = jnp.isfinite(times)
    t_safe = jnp.where(fired, times, 0.0)
    kappa, dkappa = jax.vmap(_kernels, (None, 0, 0, None, None))(solver, t_safe, input_times, tau_m, tau_s)
    w_dkappa = weights[None] * dkappa
    slope = jnp.sum(w_dkappa, axis=1) / capacitance
    a = jnp.where(fired, cotangent / jnp.maximum(slope, floor), 0.0) / capacitance
    drop = jnp.abs(a) * jnp.max(kappa, axis=1) > max_norm
    highest = jax.lax.Precision.HIGHEST
    grad_w = -jnp.einsum("bij,bj->ij", kappa, jnp.where(drop, 0.0, a), precision=highest)
    grad_t = jnp.einsum("bij,bj->bi", w_dkappa, a, precision=highest)
    return jnp.where(jnp.isfinite(input_times), grad_t, 0.0), grad_w, jnp.sum(drop).astype(times.dtype)


def _vjp_cpu(solver, *args):
    if native_on_cpu(args[0].dtype):
        from fsnn.core.cpu_kernel import layer_vjp_native

        return layer_vjp_native(solver, *args)
    return _vjp_xla(solver, *args)


def _bwd(solver, min_slope, residuals, cotangent):
    input_times, weights, times, params, max_norm = residuals
    if isinstance(cotangent, SymbolicZero):
        cotangent = jnp.zeros_like(times)
    args = (input_times, weights, times, cotangent, _constants(solver, params, max_norm, min_slope))
    if _accelerator_visible():
        branches = {"cpu": functools.partial(_vjp_cpu, solver), "default": functools.partial(_vjp_xla, solver)}
    else:
        branches = {"default": functools.partial(_vjp_cpu, solver)}
    grad_t, grad_w, dropped = jax.lax.platform_dependent(*args, **branches)
    return grad_t, grad_w, None, None, dropped, None


_batch_spike_times.defvjp(_fwd, _bwd, symbolic_zeros=True)
