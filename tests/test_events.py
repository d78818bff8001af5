"""fsnn.core.events: the event-driven oracle against a generic ODE solver with event detection."""

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from fsnn import LIFParams, simulate_neuron


def _ode_first_spike(input_times, weights, p, horizon=30.0):
    c = p.g_leak * p.tau_m
    finite = np.isfinite(input_times)
    ts, ws = input_times[finite], weights[finite]

    def rhs(t, y):
        current = np.sum(np.where(ts <= t, ws * np.exp(-(t - ts) / p.tau_s), 0.0))
        return [(p.g_leak * (p.e_leak - y[0]) + current) / c]

    def hit(t, y):
        return y[0] - p.threshold

    hit.terminal, hit.direction = True, 1
    sol = solve_ivp(rhs, (0.0, horizon), [p.e_leak], events=hit, rtol=1e-12, atol=1e-14, max_step=0.005)
    return sol.t_events[0][0] if sol.t_events[0].size else np.inf


@pytest.mark.parametrize(
    "params", [LIFParams(), LIFParams(tau_m=2.0, g_leak=0.5), LIFParams(tau_m=0.7, tau_s=1.3, threshold=0.9)]
)
def test_oracle_matches_ode_solver(params):
    rng = np.random.default_rng(1)
    fired = 0
    for _ in range(12):
        n = int(rng.integers(1, 8))
        t = rng.uniform(0, 2, n)
        w = rng.normal(0.8, 1.0, n)
        ref = _ode_first_spike(t, w, params)
        got = simulate_neuron(t, w, params)
        if np.isfinite(ref):
            fired += 1
            assert abs(got.spike_time - ref) < 1e-6
        else:
            assert got.spike_time == np.inf
    assert fired >= 3


def test_trace_records_state_at_events():
    trace = simulate_neuron(np.array([1.0, np.inf, 0.0]), np.array([0.5, 9.0, 0.25]))
    np.testing.assert_array_equal(trace.event_times, [0.0, 1.0])
    np.testing.assert_allclose(trace.i_after, [0.25, 0.25 * np.exp(-1.0) + 0.5])
    np.testing.assert_allclose(trace.v_after[1], 0.25 * 1.0 * np.exp(-1.0))  # (w/C) s e^{-s}
    assert trace.spike_time == np.inf
