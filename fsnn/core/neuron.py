r"""Current-based LIF neuron with exponential synapses: parameters, PSP kernel and membrane.

.. math::
    C \dot V = g_\ell (E_\ell - V) + I(t), \qquad
    I(t) = \sum_i w_i \Theta(t - t_i) e^{-(t - t_i)/\tau_s}, \qquad \tau_m = C / g_\ell.

For one input (``s = t - t_i > 0``) the membrane moves by

.. math::
    V - E_\ell = \frac{w}{C} \kappa(s), \qquad
    \kappa(s) = \frac{e^{-s/\tau_m} - e^{-s/\tau_s}}{1/\tau_s - 1/\tau_m}
             = s\, e^{-s/\tau_s}\, \frac{\operatorname{expm1}(s\delta)}{s\delta},
    \quad \delta = \frac{1}{\tau_s} - \frac{1}{\tau_m},

which is smooth through ``tau_m = tau_s`` (there ``kappa(s) = s e^{-s/tau}``); both forms agree
with Göltz et al. (2021), eq. 1 and its limit. Only the first spike counts, so there is no reset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

__all__ = ["LIFParams", "psp_kernel", "membrane_potential", "expm1_ratio", "log1p_ratio", "checked_params"]


class LIFParams(NamedTuple):
    """Neuron parameters; each field is a differentiable array, a scalar or one value per neuron.

    Attributes:
        tau_m: membrane time constant ``C / g_leak``.
        tau_s: synaptic time constant (the paper's unit of time).
        threshold: firing threshold ``theta`` (must exceed ``e_leak``).
        g_leak: leak conductance; the capacitance is ``C = g_leak * tau_m``.
        e_leak: leak (resting) potential, the membrane's value before any input.
    """

    tau_m: ArrayLike = 1.0
    tau_s: ArrayLike = 1.0
    threshold: ArrayLike = 1.0
    g_leak: ArrayLike = 1.0
    e_leak: ArrayLike = 0.0

    @property
    def capacitance(self) -> Array:
        return jnp.asarray(self.g_leak) * jnp.asarray(self.tau_m)

    def astype(self, dtype) -> LIFParams:
        """The same parameters as arrays of ``dtype``."""
        return LIFParams(*(jnp.asarray(x, dtype) for x in self))


def checked_params(params: LIFParams) -> LIFParams:
    """``params``, which must be a `LIFParams` (a mapping or plain tuple fails here, not deep inside)."""
    if not isinstance(params, LIFParams):
        fix = "LIFParams(**params)" if isinstance(params, Mapping) else "e.g. LIFParams(tau_m=2.0)"
        raise TypeError(f"`params` must be an fsnn.LIFParams ({fix}); got {type(params).__name__}.")
    return params


def expm1_ratio(x: Float[ArrayLike, "*s"]) -> Float[Array, "*s"]:
    r"""``expm1(x) / x``, equal to 1 at ``x = 0`` with exact derivatives there (Taylor branch)."""
    x = jnp.asarray(x)
    small = jnp.abs(x) < (1e-4 if x.dtype == jnp.float64 else 1e-2)
    xs = jnp.where(small, 1.0, x)  # double-where: the division never sees 0
    taylor = 1.0 + x * (0.5 + x * (1.0 / 6.0 + x / 24.0))
    return jnp.where(small, taylor, jnp.expm1(xs) / xs)


def log1p_ratio(x: Float[ArrayLike, "*s"]) -> Float[Array, "*s"]:
    r"""``log1p(x) / x`` for ``x > -1``, equal to 1 at ``x = 0`` (Taylor branch)."""
    x = jnp.asarray(x)
    small = jnp.abs(x) < (1e-4 if x.dtype == jnp.float64 else 1e-2)
    xs = jnp.where(small, 1.0, x)
    taylor = 1.0 - x * (0.5 - x * (1.0 / 3.0 - x / 4.0))
    return jnp.where(small, taylor, jnp.log1p(xs) / xs)


def psp_kernel(s: Float[ArrayLike, "*s"], tau_m: ArrayLike, tau_s: ArrayLike) -> Float[Array, "*s"]:
    r"""Causal PSP kernel :math:`\kappa(s)` (zero for ``s <= 0`` and for ``s = inf``).

    ``V - E_l = (w / C) * kappa(t - t_i)``; stable for any ``tau_m / tau_s`` including 1 and any
    ``s``: evaluated with the slower time constant in the exponential,
    :math:`s\,e^{-s/\tau_{slow}}\,\operatorname{expm1}(-s|\delta|)/(-s|\delta|)`, both of whose
    factors lie in ``(0, 1]`` (the form with ``e^{-s/tau_s}`` multiplies an underflow by an overflow
    once ``s |delta|`` passes ≈ 88 in float32). Exact derivatives in both time constants, also at
    ``tau_m = tau_s``.
    """
    s = jnp.asarray(s)
    live = (s > 0) & jnp.isfinite(s)
    return jnp.where(live, psp_kernel_unmasked(jnp.where(live, s, 0.0), tau_m, tau_s), 0.0)


def psp_kernel_unmasked(s: Float[ArrayLike, "*s"], tau_m: ArrayLike, tau_s: ArrayLike) -> Float[Array, "*s"]:
    """`psp_kernel` for finite ``s >= 0`` only, without the mask (no ``isfinite``: also in kernels)."""
    delta = 1.0 / tau_s - 1.0 / tau_m
    membrane_slower = delta >= 0
    tau_slow = jnp.where(membrane_slower, tau_m, tau_s)
    return s * jnp.exp(-s / tau_slow) * expm1_ratio(s * jnp.where(membrane_slower, -delta, delta))


def membrane_potential(
    t: Float[ArrayLike, "*t"],
    input_times: Float[ArrayLike, " n_in"],
    weights: Float[ArrayLike, " n_in"],
    params: LIFParams = LIFParams(),
) -> Float[Array, "*t"]:
    r"""Exact membrane potential of one neuron, :math:`V(t) = E_\ell + \frac1C\sum_i w_i\kappa(t-t_i)`.

    Args:
        t: time(s) at which to evaluate, any shape.
        input_times: presynaptic spike times ``[n_in]``; ``inf`` (or ``nan``) means silent.
        weights: synaptic weights ``[n_in]``.
        params: scalar `LIFParams` of this neuron.

    Returns:
        ``V(t)`` with the shape of ``t``. Spikes do not reset the membrane (single-spike model).

    Example:
        >>> float(membrane_potential(1.0, jnp.array([0.0]), jnp.array([1.0])))  # (1/C) 1 e^-1
        0.36787...
    """
    params = checked_params(params)
    t = jnp.asarray(t)
    input_times = jnp.asarray(input_times)
    weights = jnp.asarray(weights)
    if input_times.ndim != 1 or weights.shape != input_times.shape:
        raise ValueError(
            f"`input_times` and `weights` must both have shape [n_in]; got {input_times.shape} "
            f"and {weights.shape}. For a layer use `fsnn.layer_spike_times`."
        )
    input_times = jnp.where(jnp.isnan(input_times), jnp.inf, input_times)
    lead = (1,) * t.ndim
    s = t[..., None] - input_times.reshape(lead + input_times.shape)
    psp = weights.reshape(lead + weights.shape) * psp_kernel(s, params.tau_m, params.tau_s)
    return params.e_leak + jnp.sum(psp, axis=-1) / params.capacitance
