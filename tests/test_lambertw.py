"""fsnn.core.lambertw against scipy and mpmath, and its derivative."""

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import scipy.special
from jax.test_util import check_grads

from fsnn import lambertw

INV_E = float(mpmath.exp(-1))


def _mp(z, branch):
    with mpmath.workdps(40):
        return float(mpmath.lambertw(mpmath.mpf(float(z)), branch))


@pytest.mark.parametrize("branch", [0, -1])
def test_matches_scipy_over_domain(branch):
    rng = np.random.default_rng(0)
    if branch == 0:
        z = np.concatenate(
            [np.linspace(-0.36, 20.0, 4000), np.logspace(-300, 300, 2000), rng.uniform(-0.36, 1e3, 2000)]
        )
    else:
        z = np.concatenate([-np.logspace(-300, np.log10(0.36), 3000), rng.uniform(-0.36, -1e-8, 2000)])
    w = np.asarray(lambertw(jnp.asarray(z), branch))
    ref = scipy.special.lambertw(z, branch).real
    np.testing.assert_allclose(w, ref, rtol=4e-15, atol=1e-300)


@pytest.mark.parametrize("branch", [0, -1])
def test_near_branch_point_matches_mpmath(branch):
    # scipy loses digits here (it is off by ~1e-4 on branch -1 at z = -1/e + 2e-9); mpmath is exact.
    z = -INV_E + np.logspace(-16, -1, 60)
    w = np.asarray(lambertw(jnp.asarray(z), branch))
    ref = np.array([_mp(x, branch) for x in z])
    np.testing.assert_allclose(w, ref, rtol=2e-15)
    ours = np.abs(w - ref).max()
    theirs = np.abs(scipy.special.lambertw(z, branch).real - ref).max()
    assert ours <= theirs


def test_branch_point_and_limits():
    assert float(lambertw(-INV_E)) == -1.0
    assert float(lambertw(-INV_E, -1)) == -1.0
    assert float(lambertw(0.0)) == 0.0
    assert float(lambertw(jnp.inf)) == np.inf
    assert float(lambertw(0.0, -1)) == -np.inf
    big = 1e300
    np.testing.assert_allclose(float(lambertw(big)), _mp(big, 0), rtol=1e-15)


def test_outside_domain_is_nan():
    assert np.isnan(float(lambertw(-0.5)))
    assert np.isnan(float(lambertw(-0.5, -1)))
    assert np.isnan(float(lambertw(0.1, -1)))
    assert np.isnan(float(lambertw(jnp.nan)))


def test_bad_branch():
    with pytest.raises(ValueError, match="`branch`"):
        lambertw(1.0, branch=1)


def test_derivative():
    for z in (-0.3, -0.01, 0.5, 3.0, 1e4):
        check_grads(lambda x: lambertw(x), (jnp.float64(z),), order=2, modes=("fwd", "rev"))
    for z in (-0.3, -0.2, -0.1):
        check_grads(lambda x: lambertw(x, -1), (jnp.float64(z),), order=2, modes=("fwd", "rev"))
    assert float(jax.grad(lambertw)(0.0)) == 1.0  # finite at z = 0
    # the limits at the infinite ends (both were nan): W0(inf) = inf is flat, W_{-1} falls to -inf at 0
    assert float(jax.grad(lambertw)(jnp.inf)) == 0.0
    assert float(jax.grad(lambda x: lambertw(x, -1))(0.0)) == -np.inf
    assert np.isnan(float(jax.grad(lambertw)(-1.0)))  # outside the domain, as the value
    # dW/dz = W / (z (1 + W))
    z = jnp.linspace(0.1, 50.0, 20)
    w = lambertw(z)
    np.testing.assert_allclose(jax.vmap(jax.grad(lambertw))(z), w / (z * (1 + w)), rtol=1e-14)


def test_float32_preserved_and_accurate():
    """float32 runs fewer refinement steps than float64; both branches stay within a few ulp."""
    z = jnp.linspace(-0.3678, 100.0, 5000, dtype=jnp.float32)
    w = lambertw(z)
    assert w.dtype == jnp.float32
    ref = scipy.special.lambertw(np.asarray(z, np.float64)).real
    np.testing.assert_allclose(np.asarray(w, np.float64), ref, rtol=5e-6, atol=1e-6)
    for branch, hi in ((0, 100.0), (-1, -1e-6)):  # away from the ill-conditioned branch point
        z = jnp.linspace(-0.36, hi, 20001, dtype=jnp.float32)
        ref = scipy.special.lambertw(np.asarray(z, np.float64), branch).real
        np.testing.assert_allclose(np.asarray(lambertw(z, branch), np.float64), ref, rtol=6e-7)
    assert jax.grad(lambertw)(jnp.float32(1.0)).dtype == jnp.float32
