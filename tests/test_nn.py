"""fsnn.nn: the nnx modules hold parameters and call the core."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fsnn import LIFParams, layer_spike_times
from fsnn.nn import SpikingDense, SpikingNetwork, batched


def test_dense_appends_bias_and_matches_core():
    layer = SpikingDense(4, 7, init_mean=1.5, init_std=0.8, bias_times=(0.9,), rngs=nnx.Rngs(0))
    assert layer.kernel[...].shape == (5, 7)
    x = jnp.array([0.2, 0.5, 1.0, 1.7], jnp.float32)
    expected = layer_spike_times(jnp.concatenate([x, jnp.array([0.9], jnp.float32)]), layer.kernel[...], LIFParams())
    np.testing.assert_array_equal(layer(x), expected)
    assert layer.solver == "lambertw"


def test_network_batched_equals_per_sample():
    net = SpikingNetwork(4, (12, 3), init=((1.5, 0.8), (0.5, 0.8)), rngs=nnx.Rngs(1), param_dtype=jnp.float64)
    x = jax.random.uniform(jax.random.key(0), (6, 4), jnp.float64, 0.15, 2.0)
    graphdef, state = nnx.split(net)
    out = batched(graphdef, state, x)
    assert [o.shape for o in out] == [(6, 12), (6, 3)]
    single = jax.jit(lambda s, xi: nnx.merge(graphdef, s)(xi))
    for i in range(6):
        np.testing.assert_allclose(out[1][i], single(state, x[i])[1], rtol=1e-14)
    with pytest.raises(ValueError, match=r"`input_times` must be a batch, shape \(B, n_in\); got shape \(4,\)"):
        batched(graphdef, state, x[0])


def test_trainable_neuron_parameters_get_gradients():
    net = SpikingNetwork(
        4, (8, 3), init=((1.5, 0.8), (0.5, 0.8)), rngs=nnx.Rngs(2), trainable=("threshold", "tau_m"), per_neuron=True
    )
    assert net.layers[0].solver == "root"
    x = jnp.array([0.2, 0.5, 1.0, 1.7])

    graphdef, state = nnx.split(net)

    def loss(params):
        t = nnx.merge(graphdef, params)(x)[-1]
        return jnp.sum(jnp.where(jnp.isfinite(t), t, 0.0))

    grads = jax.jit(jax.grad(loss))(nnx.to_pure_dict(state))
    g_theta = grads["layers"][1]["neuron_learned"]["threshold"]
    assert g_theta.shape == (3,)
    assert bool(jnp.all(jnp.isfinite(g_theta))) and float(jnp.abs(g_theta).max()) > 0


def test_one_trainable_field_may_be_a_string():
    """("threshold" was taken as the fields "t", "h", ... and refused as unknown.)"""
    kwargs = {"init_mean": 1.0, "init_std": 1.0, "rngs": nnx.Rngs(0)}
    one, listed = (
        SpikingDense(4, 3, trainable="threshold", **kwargs),
        SpikingDense(4, 3, trainable=["threshold"], **kwargs),
    )
    assert list(one.neuron_learned) == list(listed.neuron_learned) == ["threshold"]


def test_errors():
    with pytest.raises(ValueError, match="`trainable`"):
        SpikingDense(2, 2, init_mean=0, init_std=1, trainable=("tau",), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="`init`"):
        SpikingNetwork(4, (8, 3), init=((1.0, 1.0),), rngs=nnx.Rngs(0))
    net = SpikingNetwork(4, (8, 3), init=((1.0, 1.0), (1.0, 1.0)), rngs=nnx.Rngs(0))
    for call in (net, net.batch):  # the input, not the kernel with its bias rows, is named
        shape = (2, 5) if call == net.batch else (5,)
        message = "a batch, shape (B, 4) (one sample: `__call__`)" if call == net.batch else "one sample, shape (4,)"
        with pytest.raises(ValueError, match=re.escape(f"`input_times` must be {message}") + ".*got shape"):
            call(jnp.ones(shape))
    # (each was a shape error from deep inside, or nothing at all)
    one, two = jnp.ones(4), jnp.ones((2, 4))
    for call, message in (
        (lambda: net(two), r"must be one sample, shape \(4,\) \(a batch: `batch`, or jax.vmap\); got shape \(2, 4\)"),
        (lambda: net.batch(one), r"must be a batch, shape \(B, 4\) .*; got shape \(4,\)"),
        (lambda: net(one, [{"threshold": 1.1}]), r"`neurons` needs one mapping per layer \(2\); got 1"),
        (lambda: net(one, [{"thresold": 1.1}, {}]), r"neuron values \['thresold'\] are no `LIFParams` fields"),
        (lambda: net.batch(two, [{"tau_x": 1.0}, {}]), r"neuron values \['tau_x'\]"),
        (lambda: net.batch(two, dropout=1.0, key=jax.random.key(0)), r"`dropout` .* must be in \[0, 1\); got 1.0"),
        (lambda: net.batch(two, dropout=-0.1, key=jax.random.key(0)), r"`dropout` .*; got -0.1"),
        (lambda: SpikingNetwork(4, (), init=(), rngs=nnx.Rngs(0)), "`sizes` must list at least one layer"),
        (lambda: SpikingDense(4, 3, init_mean=1, init_std=-1, rngs=nnx.Rngs(0)), r"`init_std` finite .*; got 1, -1"),
        (lambda: SpikingDense(4, 3, init_mean=np.inf, init_std=1, rngs=nnx.Rngs(0)), r"`init_mean` must be finite"),
        (
            lambda: SpikingDense(4, 3, init_mean=np.nan, init_std=1, rngs=nnx.Rngs(0)),
            r"`init_mean` must be .*; got nan",
        ),
        (
            lambda: SpikingDense(4, 3, init_mean=1, init_std=np.inf, rngs=nnx.Rngs(0)),
            r"`init_std` finite .*; got 1, inf",
        ),
        # (a closed form under learned time constants gave wrong times once they moved apart, without a word)
        (
            lambda: SpikingDense(4, 3, init_mean=1, init_std=1, trainable="tau_m", solver="lambertw", rngs=nnx.Rngs(0)),
            r"`solver='lambertw'` holds only at one tau_m / tau_s ratio.*use solver='root'",
        ),
        (
            lambda: SpikingDense(
                4, 3, init_mean=1, init_std=1, trainable="tau_s", solver="quadratic", rngs=nnx.Rngs(0)
            ),
            r"`solver='quadratic'`",
        ),
        (lambda: SpikingDense(4, 3, init_mean=1, init_std=1, bias_times=(np.nan,), rngs=nnx.Rngs(0)), "not nan"),
    ):
        with pytest.raises(ValueError, match=message):
            call()
    np.testing.assert_array_equal(net(one, [{"threshold": 1.0}, {}])[-1], net(one)[-1])  # known keys still work


def test_dropout_removes_hidden_spikes_and_scales_the_next_layer():
    """`SpikingNetwork.batch` with dropout: hidden times returned unchanged, the next layer sees the
    kept spikes through input weights times 1 / (1 - p) (bias row unscaled); float64 gradients of
    the dropped-out network match central differences; no key is an error."""
    net = SpikingNetwork(4, (16, 3), init=((1.5, 0.8), (0.5, 0.8)), rngs=nnx.Rngs(3), param_dtype=jnp.float64)
    x = jax.random.uniform(jax.random.key(1), (8, 4), jnp.float64, 0.15, 2.0)
    key, p = jax.random.key(7), 0.25
    plain = net.batch(x)
    hidden, out = net.batch(x, dropout=p, key=key)
    np.testing.assert_array_equal(hidden, plain[0])
    keep = jax.random.bernoulli(jax.random.fold_in(key, 1), 1.0 - p, hidden.shape)
    assert 0 < int(jnp.sum(~keep & jnp.isfinite(hidden)))  # some spikes that fired were removed
    kernel = net.layers[1].kernel[...]
    scaled = kernel.at[:16].multiply(1.0 / (1.0 - p))
    masked = jnp.where(keep, hidden, jnp.inf)
    expected = jax.vmap(lambda h: layer_spike_times(net.layers[1].with_bias(h), scaled, LIFParams()))(masked)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    assert not np.allclose(np.where(np.isfinite(out), out, 0), np.where(np.isfinite(plain[1]), plain[1], 0))

    graphdef, state = nnx.split(net)
    params = nnx.to_pure_dict(state)

    def loss(params):
        t = nnx.merge(graphdef, params).batch(x, dropout=p, key=key)[-1]
        return jnp.sum(jnp.where(jnp.isfinite(t), t, 0.0))

    grads = jax.grad(loss)(params)
    eps = 1e-6
    for layer, (i, j) in ((0, (2, 5)), (1, (3, 1)), (1, (16, 0))):
        g = grads["layers"][layer]["kernel"][i, j]

        def shifted(d, layer=layer, i=i, j=j):
            kernel = params["layers"][layer]["kernel"].at[i, j].add(d)
            return loss(
                {**params, "layers": {**params["layers"], layer: {**params["layers"][layer], "kernel": kernel}}}
            )

        fd = (shifted(eps) - shifted(-eps)) / (2 * eps)
        assert g != 0
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="needs a `key`"):
        net.batch(x, dropout=p)
