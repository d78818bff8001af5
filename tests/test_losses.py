"""fsnn.losses: the TTFS cross-entropy, MSE loss and first-spike decoding."""

import jax
import jax.numpy as jnp
import numpy as np

from fsnn.losses import first_spike_decision, is_correct, mse_spike_time, ttfs_cross_entropy


def test_ttfs_cross_entropy_formula():
    t = jnp.array([1.2, 0.9, 1.5])
    label = jnp.asarray(1)
    logits = -np.asarray(t) / 0.2
    expected = -(logits[1] - np.log(np.sum(np.exp(logits)))) + 0.005 * np.exp(0.9 / 1.0)
    np.testing.assert_allclose(ttfs_cross_entropy(t, label), expected, rtol=1e-12)
    g = jax.grad(ttfs_cross_entropy)(t, label)
    assert float(g[0]) < 0 < float(g[1])  # loss falls as the label fires earlier, the others later


def test_silent_outputs():
    t = jnp.array([jnp.inf, 0.9, jnp.inf])
    value, g = jax.value_and_grad(ttfs_cross_entropy)(t, jnp.asarray(1))
    assert np.isfinite(float(value)) and bool(jnp.all(jnp.isfinite(g)))
    assert float(g[0]) == 0.0 and float(g[2]) == 0.0
    # label silent: constant loss, no gradient
    value, g = jax.value_and_grad(ttfs_cross_entropy)(t, jnp.asarray(0))
    assert float(value) == 10.0 and float(jnp.abs(g).max()) == 0.0
    all_silent = jnp.full(3, jnp.inf)
    assert float(ttfs_cross_entropy(all_silent, jnp.asarray(2), silent_loss=3.0)) == 3.0


def test_second_derivatives_in_loss_parameters_are_finite_with_silent_outputs():
    """Hypergradients differentiate d(loss)/d(times) in xi, alpha, beta: never inf * 0."""
    t = jnp.array([jnp.inf, 0.9, 1.3])

    def slope(params, label):  # the gradient a training step uses, as a function of (xi, alpha, beta)
        return jax.grad(ttfs_cross_entropy)(t, label, xi=params[0], alpha=params[1], beta=params[2])

    params = jnp.array([0.2, 0.005, 1.0])
    for label in (0, 1, 2):  # silent label, and a silent competitor
        jac = jax.jacobian(slope)(params, jnp.asarray(label))
        assert bool(jnp.all(jnp.isfinite(jac))), label
        assert float(jnp.abs(jac[0]).max()) == 0.0  # the silent output still gets no gradient
    # against a finite difference in xi for the spiking entries
    eps = 1e-6
    fd = (slope(params.at[0].add(eps), jnp.asarray(1)) - slope(params.at[0].add(-eps), jnp.asarray(1))) / (2 * eps)
    np.testing.assert_allclose(jax.jacobian(slope)(params, jnp.asarray(1))[:, 0], fd, rtol=1e-5, atol=1e-8)


def test_decoding():
    assert int(first_spike_decision(jnp.array([1.0, 0.5, 2.0]))) == 1
    assert int(first_spike_decision(jnp.full(3, jnp.inf))) == -1
    assert not bool(is_correct(jnp.full(3, jnp.inf), jnp.asarray(0)))
    assert bool(is_correct(jnp.array([jnp.inf, 0.5, 2.0]), jnp.asarray(1)))


def test_mse_targets_and_silent():
    t = jnp.array([1.5, 2.5, jnp.inf])
    np.testing.assert_allclose(mse_spike_time(t, jnp.asarray(0)), (4.0 - 2.5) ** 2 / 3)
    g = jax.grad(mse_spike_time)(t, jnp.asarray(0))
    assert bool(jnp.all(jnp.isfinite(g))) and float(g[2]) == 0.0


def test_a_label_of_no_output_or_a_batch_is_one_clear_error():
    """A label past the outputs was clamped by JAX indexing (scored as the last neuron's), a batch of
    times was indexed by row: each gave a number without a word."""
    import pytest

    times = jnp.array([1.0, 0.5, jnp.inf])
    for loss in (ttfs_cross_entropy, mse_spike_time, is_correct):
        for label in (3, -1):
            with pytest.raises(ValueError, match=rf"^`label` must be an output neuron, 0..2; got {label}\.$"):
                loss(times, label)
        with pytest.raises(ValueError, match=r"^`label` must be one integer; got int\d+ \(2,\)\.$"):
            loss(times, jnp.array([0, 1]))
        with pytest.raises(ValueError, match=r"^`times` must be one sample's output spike times .*; got \(2, 3\)\.$"):
            loss(jnp.stack([times, times]), 1)
        batched = jax.jit(jax.vmap(loss))(jnp.stack([times, times]), jnp.array([1, 0]))  # traced labels pass
        assert batched.shape == (2,)
    with pytest.raises(ValueError, match="`times` must be one sample's"):
        first_spike_decision(jnp.stack([times, times]))


def test_loss_parameters_out_of_range_are_one_clear_error():
    """xi = 0 gave nan, a negative xi or alpha a loss that rewards a late label spike."""
    import pytest

    times = jnp.array([1.0, 0.5, jnp.inf])
    for kwargs, message in (
        ({"xi": 0.0}, r"^`xi` must be > 0; got 0\.0\.$"),
        ({"xi": -0.2}, r"^`xi` must be > 0; got -0\.2\.$"),
        ({"beta": 0.0}, r"^`beta` must be > 0"),
        ({"alpha": -0.005}, r"^`alpha` must be >= 0; got -0\.005\.$"),
        ({"xi": jnp.array(jnp.nan)}, r"^`xi` must be > 0; got nan\.$"),
    ):
        with pytest.raises(ValueError, match=message):
            ttfs_cross_entropy(times, 0, **kwargs)
    assert np.isfinite(ttfs_cross_entropy(times, 0, alpha=0.0))
    traced = jax.jit(lambda xi: ttfs_cross_entropy(times, 0, xi=xi))(0.2)  # a traced xi (hypergradients) passes
    assert np.isfinite(traced)
    for xi in (0.2, 0.0):  # a concrete array inside a caller's jit (the trainer's own hp) is checked too
        closed = jax.jit(lambda t, xi=jnp.asarray(xi): ttfs_cross_entropy(t, 0, xi=xi))
        if xi:
            assert np.isfinite(closed(times))
        else:
            with pytest.raises(ValueError, match=r"^`xi` must be > 0; got 0\.0\."):
                closed(times)
