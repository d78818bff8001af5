"""fsnn.remedies: weight bumping and the per-sample gradient drop rule."""

import jax.numpy as jnp
import numpy as np
import pytest

from fsnn.remedies import MAX_DOUBLINGS, BumpState, apply_bump, bump_targets, drop_large_weight_grads

INF = jnp.inf


def test_bump_targets_first_offending_layer():
    hidden = jnp.array([[0.5, INF, 1.0, INF], [0.4, INF, 0.7, 0.2]])  # 3/8 silent, neuron 1 and 3
    out = jnp.array([[0.5, INF], [INF, 0.3]])
    labels = jnp.array([0, 1])
    valid = jnp.array([True, True])
    layer, targets = bump_targets([hidden, out], labels, valid, (0.3, 0.0))
    assert int(layer) == 0
    np.testing.assert_array_equal(targets[0], [False, True, False, True])
    layer, targets = bump_targets([hidden, out], labels, valid, (0.5, 0.0))
    assert int(layer) == -1  # labels fired: output layer fine in "label" mode
    layer, targets = bump_targets([hidden, out], jnp.array([1, 1]), valid, (0.5, 0.0))
    assert int(layer) == 1
    np.testing.assert_array_equal(targets[1], [True, True])  # all neurons silent for some sample
    # invalid (padding) samples are ignored
    layer, _ = bump_targets([hidden, out], jnp.array([1, 1]), jnp.array([False, True]), (0.5, 0.0))
    assert int(layer) == -1
    layer, _ = bump_targets([hidden, out], labels, valid, (0.5, 0.2), output_criterion="all")
    assert int(layer) == 1
    with pytest.raises(ValueError, match="`max_missing`"):
        bump_targets([hidden, out], labels, valid, (0.5,))
    with pytest.raises(ValueError, match="`output_criterion` must be 'label' or 'all'; got 'labels'"):
        bump_targets([hidden, out], labels, valid, (0.5, 0.2), output_criterion="labels")  # (counted as "all")


def test_dead_neurons_are_no_bumps_business():
    """A chip's dead neurons never fire: counted, they had every batch bumped once they outnumbered
    `max_missing` (and the bump doubled on and on), so nothing trained."""
    hidden = jnp.array([[0.5, INF, 1.0, INF], [0.4, INF, 0.7, INF]])  # neurons 1 and 3 dead: 1/2 silent
    out = jnp.array([[INF, 0.5], [INF, 0.3]])  # output 0 dead
    valid = jnp.array([True, True])
    alive = [jnp.array([True, False, True, False]), jnp.array([False, True])]
    assert int(bump_targets([hidden, out], jnp.array([0, 1]), valid, (0.3, 0.0))[0]) == 0  # blind to the chip
    layer, targets = bump_targets([hidden, out], jnp.array([0, 1]), valid, (0.3, 0.0), alive=alive)
    assert int(layer) == -1  # the live neurons all fired; the sample labelled 0 (dead) cannot be helped
    np.testing.assert_array_equal(targets[0], [False, False, False, False])
    hidden = hidden.at[1, 2].set(INF)  # a live neuron silent for one sample: 1/4 of the live entries
    layer, targets = bump_targets([hidden, out], jnp.array([0, 1]), valid, (0.2, 0.0), alive=alive)
    assert int(layer) == 0
    np.testing.assert_array_equal(targets[0], [False, False, True, False])  # the live one only
    out = out.at[1, 1].set(INF)  # the live label neuron silent for its one sample
    assert int(bump_targets([hidden, out], jnp.array([0, 1]), valid, (0.3, 0.0), alive=alive)[0]) == 1


def test_apply_bump_doubles_on_consecutive_bumps():
    kernels = [jnp.zeros((3, 2)), jnp.zeros((3, 2))]
    targets = [jnp.array([True, False]), jnp.array([False, True])]
    state = BumpState.initial(5e-4)
    k1, state = apply_bump(kernels, targets, jnp.asarray(1), state, 5e-4)
    np.testing.assert_allclose(k1[1][:, 1], 5e-4)
    assert float(jnp.abs(k1[0]).max()) == 0.0 and float(k1[1][:, 0].max()) == 0.0
    k2, state = apply_bump(k1, targets, jnp.asarray(1), state, 5e-4)
    np.testing.assert_allclose(k2[1][:, 1], 5e-4 + 1e-3, rtol=1e-6)
    k3, state = apply_bump(k2, targets, jnp.asarray(-1), state, 5e-4)  # no bump: reset
    np.testing.assert_array_equal(k3[1], k2[1])
    k4, state = apply_bump(k3, targets, jnp.asarray(1), state, 5e-4)
    np.testing.assert_allclose(k4[1][:, 1] - k3[1][:, 1], 5e-4, rtol=1e-6)
    # a layer that never fires: the doubling stops (it reached inf after ≈ 140 bumps in float32)
    for _ in range(200):
        k4, state = apply_bump(k4, targets, jnp.asarray(1), state, 5e-4)
    assert float(state.value) == pytest.approx(5e-4 * 2.0**MAX_DOUBLINGS) and bool(jnp.all(jnp.isfinite(k4[1])))


def test_drop_large_weight_grads():
    per_sample = jnp.array([[[0.1, 0.3], [0.1, 0.1]], [[0.1, 0.1], [0.1, 0.1]]])  # sample 0, column 1 too big
    summed, dropped = drop_large_weight_grads(per_sample, 0.2)
    assert int(dropped) == 1
    np.testing.assert_allclose(summed, [[0.2, 0.1], [0.2, 0.1]])
