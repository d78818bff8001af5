"""fsnn.encoding."""

import jax
import jax.numpy as jnp
import numpy as np

from fsnn.encoding import add_input_noise, values_to_times


def test_values_to_times():
    np.testing.assert_allclose(values_to_times(jnp.array([0.0, 0.5, 1.0])), [0.15, 1.075, 2.0])
    assert values_to_times(jnp.zeros(2, jnp.float32)).dtype == jnp.float32


def test_noise_reflects_and_keeps_silence():
    times = jnp.array([0.01] * 1000 + [jnp.inf])
    noisy = add_input_noise(jax.random.key(0), times, 0.3)
    assert float(noisy[-1]) == np.inf
    assert float(noisy[:-1].min()) >= 0.0  # reflected, never negative
    assert 0.15 < float(jnp.std(noisy[:-1])) < 0.3  # folded normal
