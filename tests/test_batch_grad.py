"""fsnn.core.batch_grad: the batch-level backward pass gives the per-sample custom JVP's gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsnn import LIFParams
from fsnn.core import cpu_kernel
from fsnn.core.batch_grad import batch_spike_times
from fsnn.core.spike_time import layer_spike_times, spike_times_at, xla_search
from fsnn.remedies import drop_large_weight_grads

PAPER = LIFParams()
DOUBLE = LIFParams(tau_m=2.0, g_leak=0.5)
ODD = LIFParams(tau_m=1.7, tau_s=0.8, threshold=1.2, g_leak=0.7, e_leak=0.1)
# Wide layers run the native pass over neurons, narrow ones (< 16 neurons) over inputs.
SHAPES = [(6, 40), (90, 5), (33, 17)]


@pytest.fixture(scope="module", autouse=True)
def native():
    assert cpu_kernel.available(), "the native kernel must build on the test machines (C++17 compiler)"


def problem(seed, batch, n_in, n_out, dtype=jnp.float64, scale=1.0):
    """Inputs with silent entries, a tie group and an all-silent sample; a loss weight per output."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.0, 2.0, (batch, n_in))
    t[rng.random((batch, n_in)) < 0.15] = np.inf
    t[1, : n_in // 2] = 0.5  # simultaneous input spikes
    t[2] = np.inf  # nothing fires
    w = rng.normal(0.6 * 6.0 / np.sqrt(n_in), 1.0, (n_in, n_out))
    y = rng.normal(size=(batch, n_out))
    return (jnp.asarray(a * s, dtype) for a, s in ((t, scale), (w, 1.0), (y, 1.0)))


def weighted(times, y):
    return jnp.sum(jnp.where(jnp.isfinite(times), times * y, 0.0))


def per_sample_loss(params):
    def loss(x, w, y):
        return weighted(jax.vmap(layer_spike_times, (0, None, None))(x, w, params), y)

    return loss


def batch_loss(params, max_dw_norm=None):
    def loss(x, w, y, counter=0.0):
        return weighted(batch_spike_times(x, w, params, max_dw_norm=max_dw_norm, drop_counter=counter), y)

    return loss


@pytest.mark.parametrize("native_pass", [True, False], ids=["native", "xla"])
@pytest.mark.parametrize("params", [PAPER, DOUBLE, ODD], ids=["lambertw", "quadratic", "root"])
@pytest.mark.parametrize(("n_in", "n_out"), SHAPES)
def test_batch_gradients_equal_the_per_sample_custom_jvp(params, n_in, n_out, native_pass):
    x, w, y = problem(0, 9, n_in, n_out)
    with xla_search(not native_pass):
        times = jax.jit(lambda x, w: batch_spike_times(x, w, params))(x, w)
        grads = jax.jit(jax.grad(batch_loss(params), (0, 1)))(x, w, y)
    ref_times = jax.jit(jax.vmap(lambda xb, w: layer_spike_times(xb, w, params), (0, None)))(x, w)
    reference = jax.jit(jax.grad(per_sample_loss(params), (0, 1)))(x, w, y)
    fired = jnp.isfinite(ref_times)
    assert 0.2 < float(jnp.mean(fired)) < 1.0  # silent and firing neurons both present
    np.testing.assert_array_equal(np.isfinite(times), np.asarray(fired))
    np.testing.assert_allclose(times[fired], ref_times[fired], rtol=1e-12)
    for got, want in zip(grads, reference):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11 * float(jnp.max(jnp.abs(want))))
    assert float(jnp.max(jnp.abs(grads[1]))) > 0
    assert np.all(np.asarray(grads[0])[~np.isfinite(np.asarray(x))] == 0)  # silent inputs get none


def test_batch_gradient_matches_finite_differences():
    x, w, y = problem(1, 5, 12, 20)
    loss = jax.jit(batch_loss(PAPER))
    grad_x, grad_w = jax.jit(jax.grad(batch_loss(PAPER), (0, 1)))(x, w, y)
    eps = 1e-6
    for i, j in [(0, 0), (3, 7), (11, 19), (5, 2)]:
        bump = jnp.zeros_like(w).at[i, j].set(eps)
        fd = (loss(x, w + bump, y) - loss(x, w - bump, y)) / (2 * eps)
        np.testing.assert_allclose(grad_w[i, j], fd, rtol=1e-6, atol=1e-9)
    b, i = 0, int(np.flatnonzero(np.isfinite(np.asarray(x[0])))[0])
    bump = jnp.zeros_like(x).at[b, i].set(eps)
    fd = (loss(x + bump, w, y) - loss(x - bump, w, y)) / (2 * eps)
    np.testing.assert_allclose(grad_x[b, i], fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("native_pass", [True, False], ids=["native", "xla"])
@pytest.mark.parametrize(("n_in", "n_out"), SHAPES)
def test_gradient_drop_equals_dropping_per_sample_columns(n_in, n_out, native_pass):
    """The drop rule of `fsnn.remedies` on explicit per-sample gradients, and its count."""
    x, w, y = problem(2, 11, n_in, n_out)
    per_sample = jax.vmap(jax.grad(lambda xb, w, yb: per_sample_loss(PAPER)(xb[None], w, yb[None]), 1), (0, None, 0))
    columns = jax.jit(per_sample)(x, w, y)
    max_norm = float(np.quantile(np.max(np.abs(np.asarray(columns)), axis=1), 0.7))
    want, n_want = drop_large_weight_grads(columns, max_norm)
    with xla_search(not native_pass):
        grad_w, count = jax.jit(jax.grad(batch_loss(PAPER, max_norm), (1, 3)))(x, w, y, 0.0)
        grad_x = jax.jit(jax.grad(batch_loss(PAPER, max_norm)))(x, w, y)
    assert int(n_want) > 0
    assert float(count) == int(n_want)
    np.testing.assert_allclose(grad_w, want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grad_x, jax.jit(jax.grad(per_sample_loss(PAPER)))(x, w, y), rtol=1e-9, atol=1e-12)


def test_runs_under_vmap_equal_runs_one_by_one():
    """A sweep's runs (batched weights, or weights shared by the runs) in one native call."""
    runs = [tuple(problem(seed, 6, 10, 20)) for seed in range(3)]
    x, w, y = (jnp.stack(a) for a in zip(*runs))
    grad = jax.jit(jax.grad(batch_loss(PAPER, 0.3), (0, 1, 3)))
    stacked = jax.jit(jax.vmap(grad, (0, 0, 0, None)))(x, w, y, 0.0)
    shared = jax.jit(jax.vmap(grad, (0, None, 0, None)))(x, w[0], y, 0.0)
    for r in range(3):
        for got, want in zip((a[r] for a in stacked), grad(x[r], w[r], y[r], 0.0)):
            np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
        for got, want in zip((a[r] for a in shared), grad(x[r], w[0], y[r], 0.0)):
            np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)


def test_wide_layer_weight_gradient_is_the_samples_summed_in_order_bit_for_bit():
    """Over the neurons, the native pass sums each weight-gradient entry over the samples in order,
    in one thread: the same bits on any number of threads. 1000 neurons make the batch of 1100 run
    in two chunks of samples (records of at most 2^22 values); one sample per vmapped run gives each
    sample's own gradient."""
    x, w, y = problem(4, 1100, 4, 1000)
    x = x.at[:, 0].set(jnp.where(jnp.arange(1100) % 7 == 0, -1000.0, x[:, 0]))  # pair exponentials
    grad = jax.jit(jax.grad(batch_loss(PAPER, 0.5), (0, 1, 3)))
    grad_x, grad_w, count = grad(x, w, y, 0.0)
    each_x, each_w, each_count = jax.jit(jax.vmap(grad, (0, None, 0, None)))(x[:, None], w, y[:, None], 0.0)
    total = np.zeros(w.shape)
    for sample in np.asarray(each_w):
        total = total + sample
    assert np.array_equal(np.asarray(grad_w), total)
    assert np.array_equal(np.asarray(grad_x), np.asarray(each_x)[:, 0])
    assert float(count) == float(np.sum(each_count)) > 0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_times_spread_over_many_time_constants_keep_exact_gradients(dtype):
    """Beyond the span where the exponential factorises per input and neuron, the pair form runs."""
    x, w, y = problem(3, 6, 8, 24, dtype)
    x = x.at[0, :4].add(-800.0)  # inputs 800 tau_s before the rest: e^800 overflows either float
    grads = jax.jit(jax.grad(batch_loss(PAPER), (0, 1)))(x, w, y)
    reference = jax.jit(jax.grad(per_sample_loss(PAPER), (0, 1)))(x, w, y)
    rtol = 1e-9 if dtype == jnp.float64 else 2e-4
    for got, want in zip(grads, reference):
        assert np.all(np.isfinite(np.asarray(got)))
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize("native_pass", [True, False], ids=["native", "xla"])
@pytest.mark.parametrize("params", [PAPER, ODD], ids=["lambertw", "root"])
@pytest.mark.parametrize(("n_in", "n_out"), SHAPES[:2])
def test_observed_times_give_the_gradients_of_spike_times_at(params, n_in, n_out, native_pass):
    """In-the-loop training: times measured elsewhere (the model's, jittered; some earlier than the
    model's crossing, some silent) carry the layer's gradients evaluated at them, slope floor included."""
    x, w, y = problem(5, 9, n_in, n_out)
    model = jax.jit(jax.vmap(lambda xb, w: layer_spike_times(xb, w, params), (0, None)))(x, w)
    observed = model + 0.1 * jax.random.normal(jax.random.key(0), model.shape, model.dtype)
    observed = observed.at[0, 0].set(jnp.inf)  # silent on the chip
    min_slope = 1.0  # binds for some spikes (checked below)

    def reference(x, w, floor):
        at = jax.vmap(lambda o, xb: spike_times_at(o, xb, w, params, min_slope=floor))(observed, x)
        return weighted(at, y)

    def loss(x, w):
        return weighted(batch_spike_times(x, w, params, observed=observed, min_slope=min_slope), y)

    with xla_search(not native_pass):
        times = jax.jit(lambda x, w: batch_spike_times(x, w, params, observed=observed))(x, w)
        grads = jax.jit(jax.grad(loss, (0, 1)))(x, w)
    want = jax.jit(jax.grad(reference, (0, 1)), static_argnums=2)(x, w, min_slope)
    unfloored = jax.jit(jax.grad(reference, (0, 1)), static_argnums=2)(x, w, None)
    np.testing.assert_array_equal(times, observed)
    assert not np.allclose(unfloored[1], want[1])  # the floor matters here
    for got, ref in zip(grads, want):
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-11 * float(jnp.max(jnp.abs(ref))))
    with pytest.raises(ValueError, match=r"observed.*\[batch, n_out\]"):
        batch_spike_times(x, w, params, observed=observed[:, :1])
    with pytest.raises(ValueError, match="min_slope"):
        batch_spike_times(x, w, params, observed=observed, min_slope=0.0)


def test_neuron_parameter_gradients_are_refused():
    x, w, _ = problem(4, 3, 5, 20)
    with pytest.raises(ValueError, match="layer_spike_times"):
        jax.grad(lambda theta: jnp.sum(batch_spike_times(x, w, PAPER._replace(threshold=theta))))(1.0)
    with pytest.raises(ValueError, match="scalar"):
        batch_spike_times(x, w, PAPER._replace(threshold=jnp.ones(20)))
    with pytest.raises(ValueError, match=r"\[batch, n_in\]"):
        batch_spike_times(x[0], w, PAPER)


def test_empty_batches_and_layers_without_inputs():
    assert batch_spike_times(jnp.zeros((0, 5)), jnp.ones((5, 3))).shape == (0, 3)
    silent = batch_spike_times(jnp.zeros((2, 0)), jnp.ones((0, 3)))
    assert silent.shape == (2, 3) and bool(jnp.all(jnp.isinf(silent)))
