"""Event-driven simulation of one LIF neuron, independent of the closed forms.

The state ``(V, I)`` is carried from input to input with the exact propagator of the linear ODE
(no Lambert W, no quadratic, no prefix sums), and the first threshold crossing inside each
inter-event interval is located numerically (dense sampling, a golden-section search for a
grazing maximum, then bisection). Plain NumPy in float64: a test oracle and the source of exact
membrane traces for plots, not a training path.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from fsnn.core.neuron import LIFParams, checked_params

__all__ = ["EventTrace", "simulate_neuron"]

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


class EventTrace(NamedTuple):
    """Result of `simulate_neuron`.

    Attributes:
        event_times: sorted finite input times ``[n_events]``.
        v_after: membrane potential just after each input event ``[n_events]``.
        i_after: synaptic current just after each input event ``[n_events]``.
        spike_time: first threshold crossing (``inf`` if none).
    """

    event_times: np.ndarray
    v_after: np.ndarray
    i_after: np.ndarray
    spike_time: float


def _propagate(v0, i0, x, p):
    """Exact ``(V, I)`` a time ``x >= 0`` after a state ``(v0, i0)`` with no new input."""
    c = p.g_leak * p.tau_m
    em, es = np.exp(-x / p.tau_m), np.exp(-x / p.tau_s)
    if p.tau_m == p.tau_s:
        kern = x * es
    else:
        kern = (em - es) / (1.0 / p.tau_s - 1.0 / p.tau_m)
    v = p.e_leak + (v0 - p.e_leak) * em + i0 / c * kern
    return v, i0 * es


def _crossing(v0, i0, length, p, samples):
    """First ``x`` in ``[0, length]`` with ``V = threshold``, or ``None``."""
    grid = np.linspace(0.0, length, samples)
    v, _ = _propagate(v0, i0, grid, p)
    above = np.nonzero(v >= p.threshold)[0]
    if above.size:
        j = above[0]
        if j == 0:
            return 0.0
        lo, hi = grid[j - 1], grid[j]
    else:  # a maximum that grazes threshold between two samples
        j = int(np.argmax(v))
        if v[j] < p.threshold - 0.05 * (p.threshold - p.e_leak):
            return None
        lo, hi = grid[max(j - 1, 0)], grid[min(j + 1, samples - 1)]
        for _ in range(200):
            m1 = hi - _GOLDEN * (hi - lo)
            m2 = lo + _GOLDEN * (hi - lo)
            if _propagate(v0, i0, m1, p)[0] < _propagate(v0, i0, m2, p)[0]:
                lo = m1
            else:
                hi = m2
        peak = 0.5 * (lo + hi)
        if _propagate(v0, i0, peak, p)[0] < p.threshold:
            return None
        lo, hi = grid[max(j - 1, 0)], peak
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _propagate(v0, i0, mid, p)[0] >= p.threshold:
            hi = mid
        else:
            lo = mid
    return hi


def simulate_neuron(
    input_times: np.ndarray,
    weights: np.ndarray,
    params: LIFParams = LIFParams(),
    *,
    samples: int = 257,
    horizon: float | None = None,
) -> EventTrace:
    """Simulate one neuron event by event and return its first spike.

    Args:
        input_times: ``[n_in]`` input spike times (``inf``/``nan`` = silent).
        weights: ``[n_in]`` weights.
        params: scalar `LIFParams`.
        samples: grid points per inter-event interval for the crossing search.
        horizon: how long after the last input to look (default ``20 max(tau_m, tau_s)``).
    """
    p = LIFParams(*(float(x) for x in checked_params(params)))
    t = np.asarray(input_times, np.float64)
    w = np.asarray(weights, np.float64)
    keep = np.isfinite(t)
    order = np.argsort(t[keep], kind="stable")
    t, w = t[keep][order], w[keep][order]
    horizon = 20.0 * max(p.tau_m, p.tau_s) if horizon is None else horizon
    v, i = p.e_leak, 0.0
    vs, is_ = [], []
    spike = math.inf
    for k in range(t.size):
        i = i + w[k]
        vs.append(v)
        is_.append(i)
        length = (t[k + 1] - t[k]) if k + 1 < t.size else horizon
        if math.isinf(spike):
            x = _crossing(v, i, length, p, samples)
            if x is not None:
                spike = t[k] + x
        v, i = _propagate(v, i, length, p)
    return EventTrace(t, np.asarray(vs), np.asarray(is_), spike)
