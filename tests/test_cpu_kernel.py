"""fsnn.core.cpu_kernel: the native CPU search finds the XLA search's prefixes; building and fallback."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsnn import LIFParams
from fsnn.core import cpu_kernel, spike_time

PAPER = LIFParams()
DOUBLE = LIFParams(tau_m=2.0, g_leak=0.5)
ODD = LIFParams(tau_m=1.7, tau_s=0.8, threshold=1.2, g_leak=0.7, e_leak=0.1)
CASES = [(PAPER, "lambertw"), (DOUBLE, "quadratic"), (ODD, "root")]


@pytest.fixture(scope="module", autouse=True)
def native():
    assert cpu_kernel.available(), "the native kernel must build on the test machines (C++17 compiler)"


def rows(rng, batch, n_in):
    """Input times: random with silent inputs, many ties, signed zeros and negative times, all silent,
    times clustered within 1e-3 beside one outlier."""
    t = rng.uniform(0.0, 3.0, (batch, n_in))
    t[rng.random((batch, n_in)) < 0.1] = np.inf
    t[1] = np.round(t[1], 1)  # ties
    t[2, ::2] = 2.0  # a background tie group
    t[3, : n_in // 2] = -0.0
    t[3, n_in // 2 :] = rng.uniform(-1.0, 1.0, n_in - n_in // 2)
    t[4] = np.inf
    t[5] = 1.0 + rng.uniform(0.0, 1e-3, n_in)  # clustered in one bucket: the radix sort's fallback
    t[5, 0] = 2.5
    return t


def searches(solver, params, t, w):
    """``(fired, t_k, B, D, peak)`` from the native kernel and from the XLA search, batched."""
    tau_m = params.tau_s if solver == "lambertw" else params.tau_m
    theta_c = params.capacitance * (params.threshold - params.e_leak)
    args = (tau_m, params.tau_s, theta_c)

    def both(ti):
        return (
            cpu_kernel.causal_prefix_native(solver, ti, w, *args),
            spike_time._search_xla_cpu(solver, ti, w, *args),
        )

    return jax.jit(jax.vmap(both))(t)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize(("params", "solver"), CASES)
@pytest.mark.parametrize(("n_in", "n_out"), [(7, 40), (90, 5), (300, 24)])
def test_native_search_matches_the_xla_search(params, solver, n_in, n_out, dtype):
    """Same causal prefixes as the XLA searches (walk for wide layers, all-prefix test for narrow ones).

    Sizes cover the insertion sort (<= 32 finite inputs) and the radix sort; per-neuron thresholds
    and, for ``root``, per-neuron membrane time constants.
    """
    rng = np.random.default_rng(n_in * 31 + n_out)
    t = jnp.asarray(rows(rng, 8, n_in), dtype)
    w = jnp.asarray(rng.normal(0.1, 1.0, (n_in, n_out)) * 4.0 / np.sqrt(n_in), dtype)
    scale = jnp.asarray(rng.uniform(0.8, 1.2, n_out), dtype)
    params = params.astype(dtype)._replace(threshold=params.threshold * scale)
    if solver == "root":
        params = params._replace(tau_m=params.tau_m * jnp.asarray(rng.uniform(0.8, 1.25, n_out), dtype))
    native, xla = searches(solver, params, t, w)
    fired = xla[0]
    assert 0 < int(fired[:4].sum()) < fired[:4].size and not fired[4].any()
    np.testing.assert_array_equal(native[0], fired)
    tol = 1e-12 if dtype == jnp.float64 else 2e-5
    for a, b in zip(native[1:], xla[1:]):
        np.testing.assert_allclose(jnp.where(fired, a, 0.0), jnp.where(fired, b, 0.0), rtol=tol, atol=tol)


def test_native_search_under_nested_vmap_with_batched_weights_and_parameters():
    """Runs x samples (as in `fsnn sweep`): weights and thresholds per run, times per run and sample."""
    rng = np.random.default_rng(3)
    runs, batch, n_in, n_out = 3, 6, 40, 12
    t = jnp.asarray(rng.uniform(0, 3, (runs, batch, n_in)))
    w = jnp.asarray(rng.normal(0.2, 0.8, (runs, n_in, n_out)))
    theta = jnp.asarray(rng.uniform(0.7, 1.3, runs))

    def layer(ti, wi, th):
        return spike_time.layer_spike_times(ti, wi, LIFParams(threshold=th), solver="lambertw")

    batched = jax.jit(jax.vmap(jax.vmap(layer, (0, None, None)), (0, 0, 0)))(t, w, theta)
    for r in range(runs):
        alone = jax.jit(jax.vmap(layer, (0, None, None)))(t[r], w[r], theta[r])
        np.testing.assert_array_equal(jnp.isfinite(batched[r]), jnp.isfinite(alone))
        np.testing.assert_allclose(batched[r], alone, rtol=1e-14)
    assert 0 < int(jnp.isfinite(batched).sum()) < batched.size


def test_large_batches_split_over_threads_give_each_sample_its_own_result():
    """A batch big enough to be split over XLA's threads (in chunks that start inside a run of a
    nested batch) gives exactly what each sample gives alone (one at a time: never split)."""
    rng = np.random.default_rng(5)
    runs, batch, n_in, n_out = 3, 77, 30, 50
    t = jnp.asarray(rows(rng, runs * batch, n_in).reshape(runs, batch, n_in))
    w = jnp.asarray(rng.normal(0.2, 0.8, (runs, n_in, n_out)))
    search = functools.partial(cpu_kernel.causal_prefix_native, "lambertw", tau_m=1.0, tau_s=1.0, theta_c=1.0)
    batched = jax.jit(jax.vmap(jax.vmap(search, (0, None)), (0, 0)))(t, w)
    for r in range(runs):
        alone = jax.jit(lambda ti, wr: jax.lax.map(lambda x: search(x, wr), ti))(t[r], w[r])  # noqa: B023
        for a, b in zip(batched, alone):
            np.testing.assert_array_equal(a[r], b)
    assert 0 < int(batched[0].sum()) < batched[0].size


def test_layer_spike_times_and_gradients_equal_with_and_without_the_kernel(monkeypatch):
    """The kernel only finds prefixes: spike times and exact gradients are those of the XLA path."""
    rng = np.random.default_rng(4)
    t = jnp.asarray(rows(rng, 6, 50))
    w = jnp.asarray(rng.normal(0.1, 0.6, (50, 20)))

    def run():
        fn = jax.vmap(functools.partial(spike_time.layer_spike_times, solver="root"), (0, None, None))

        def loss(w):
            out = fn(t, w, ODD)
            return jnp.sum(jnp.where(jnp.isfinite(out), out, 0.0))

        return jax.jit(fn)(t, w, ODD), jax.jit(jax.grad(loss))(w)

    native = run()
    monkeypatch.setattr(spike_time, "NATIVE", False)
    xla = run()
    np.testing.assert_array_equal(jnp.isfinite(native[0]), jnp.isfinite(xla[0]))
    np.testing.assert_allclose(native[0], xla[0], rtol=1e-12)
    np.testing.assert_allclose(native[1], xla[1], rtol=1e-10, atol=1e-13)
    assert float(jnp.abs(native[1]).max()) > 0


def test_missing_compiler_warns_and_falls_back(monkeypatch, tmp_path):
    """No compiler: one warning that names the fix, no library left behind, the XLA search runs."""
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("FSNN_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.warns(RuntimeWarning, match="C\\+\\+17 compiler"):
        assert cpu_kernel.available.__wrapped__() is False
    assert not any((tmp_path / "cache").glob("*.so"))
    monkeypatch.setenv("FSNN_NATIVE", "0")
    assert cpu_kernel.available.__wrapped__() is False  # switched off: silently


def test_library_is_keyed_built_atomically_and_rebuilt_when_corrupt(monkeypatch, tmp_path):
    """A build writes the library under its key, a corrupt one is rebuilt; another compiler, another key."""
    monkeypatch.setenv("FSNN_CACHE_DIR", str(tmp_path))
    path = cpu_kernel.library_path()
    cpu_kernel._build(path)
    assert path.exists() and [p.name for p in tmp_path.iterdir()] == [path.name]
    path.write_bytes(b"not a shared library")  # a corrupt cache entry is rebuilt, not trusted
    assert cpu_kernel._load(path) is not None and path.stat().st_size > 1000
    monkeypatch.setenv("CXX", os.environ.get("CXX", "c++") + " -DFSNN_OTHER_BUILD")
    assert cpu_kernel.library_path() != path
