"""fsnn.core.neuron: PSP kernel and membrane potential against the ODE itself."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from fsnn import LIFParams, membrane_potential, psp_kernel
from fsnn.core.neuron import expm1_ratio, log1p_ratio


def _ode_membrane(t_eval, input_times, weights, p):
    """Integrate C dV/dt = g_l (E_l - V) + I(t) numerically, input by input."""
    c = p.g_leak * p.tau_m
    order = np.argsort(input_times)
    ts, ws = np.asarray(input_times)[order], np.asarray(weights)[order]

    def rhs(t, y):
        current = np.sum(np.where(ts <= t, ws * np.exp(-(t - ts) / p.tau_s), 0.0))
        return [(p.g_leak * (p.e_leak - y[0]) + current) / c]

    sol = solve_ivp(rhs, (0.0, float(np.max(t_eval))), [p.e_leak], t_eval=t_eval, rtol=1e-11, atol=1e-13, max_step=0.01)
    return sol.y[0]


@pytest.mark.parametrize(
    "params",
    [
        LIFParams(),
        LIFParams(tau_m=2.0, g_leak=0.5),
        LIFParams(tau_m=1.7, tau_s=0.8, threshold=1.2, g_leak=0.7, e_leak=0.1),
        LIFParams(tau_m=1.0 + 1e-9),
    ],
)
def test_membrane_matches_ode(params):
    rng = np.random.default_rng(0)
    t_in = rng.uniform(0, 2, 6)
    w = rng.normal(0.5, 1.0, 6)
    grid = np.linspace(0.0, 5.0, 101)
    v = membrane_potential(jnp.asarray(grid), jnp.asarray(t_in), jnp.asarray(w), params)
    np.testing.assert_allclose(v, _ode_membrane(grid, t_in, w, params), atol=1e-8)


def test_kernel_closed_forms_and_limit():
    s = jnp.linspace(-1.0, 8.0, 200)
    k_equal = psp_kernel(s, 1.0, 1.0)
    np.testing.assert_allclose(k_equal, np.where(s > 0, s * np.exp(-s), 0.0), atol=1e-15)
    k_double = psp_kernel(s, 2.0, 1.0)  # tau_s/(tau_m - tau_s) (e^{-s/tau_m} - e^{-s/tau_s}) * tau_m
    np.testing.assert_allclose(k_double, np.where(s > 0, 2.0 * (np.exp(-s / 2) - np.exp(-s)), 0.0), atol=1e-15)
    # smooth through tau_m = tau_s, including the derivative in tau_m
    near = psp_kernel(s, 1.0 + 1e-7, 1.0)
    np.testing.assert_allclose(near, k_equal, atol=1e-6)
    d_tau_m = jax.vmap(jax.grad(psp_kernel, argnums=1), in_axes=(0, None, None))(s, 1.0, 1.0)
    fd = (psp_kernel(s, 1.0 + 1e-5, 1.0) - psp_kernel(s, 1.0 - 1e-5, 1.0)) / 2e-5
    np.testing.assert_allclose(d_tau_m, fd, atol=1e-9)
    assert float(psp_kernel(jnp.inf, 1.0, 1.0)) == 0.0


def test_ratio_helpers_are_smooth_at_zero():
    x = jnp.array([-1e-3, -1e-6, 0.0, 1e-6, 1e-3])
    np.testing.assert_allclose(expm1_ratio(x), np.where(x == 0, 1.0, np.expm1(x) / np.where(x == 0, 1, x)), rtol=1e-15)
    np.testing.assert_allclose(log1p_ratio(x), np.where(x == 0, 1.0, np.log1p(x) / np.where(x == 0, 1, x)), rtol=1e-15)
    assert float(jax.grad(expm1_ratio)(0.0)) == 0.5
    assert float(jax.grad(log1p_ratio)(0.0)) == -0.5


def test_membrane_silent_and_nan_inputs_do_nothing():
    t = jnp.array([0.5, jnp.inf, jnp.nan])
    w = jnp.array([1.0, 5.0, 5.0])
    v = membrane_potential(jnp.array([0.0, 1.0, 3.0]), t, w)
    ref = membrane_potential(jnp.array([0.0, 1.0, 3.0]), t[:1], w[:1])
    np.testing.assert_array_equal(v, ref)
    with pytest.raises(ValueError, match="`input_times` and `weights`"):
        membrane_potential(0.0, jnp.zeros(3), jnp.zeros(2))
