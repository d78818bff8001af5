"""The causal-prefix search of a layer as one Pallas kernel (GPU, compiled through Triton).

`fsnn.core.spike_time._causal_prefix` walks a sample's sorted inputs once, carrying ``B, D`` of
every neuron. In XLA each step of that walk is a kernel launch on a GPU, so the walk takes
`~fsnn.core.spike_time.CHUNK` inputs per step there (`_causal_prefix_chunked`). Here one program
per sample (a `jax.vmap` turns the batch into the grid) does the whole walk with the state of every
neuron in registers: per input it reads one time, one index and the weight row that index names,
so nothing of size ``n_in x n_out`` is written to memory. Same recurrence, same result; tested
against `_causal_prefix` on CPU in Pallas interpret mode.

Sizes are padded to powers of two (Triton's blocks): neurons with zero weights, inputs silent.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jaxtyping import Array, ArrayLike, Float, Int

from fsnn.core.spike_time import _gaps, _walk_step

__all__ = ["causal_prefix_kernel"]

# Triton launch settings: warps per program (``None``: one per 64 neurons, 1 to 8) and software-
# pipelining stages of the input loop. Measured on an H100 only with these values (BENCHMARKS.md).
NUM_WARPS: int | None = None
NUM_STAGES = 1


def _pow2(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


def _as_row(x, width: int, dtype) -> Array:
    """A neuron parameter as a kernel operand: ``[1]`` if shared by the layer, else ``[width]`` (padded with 1)."""
    x = jnp.asarray(x, dtype)
    if x.ndim == 0:
        return x.reshape(1)
    return jnp.concatenate([x, jnp.ones((width - x.shape[0],), dtype)])


def causal_prefix_kernel(
    solver: str,
    ts: Float[Array, " n_in"],
    order: Int[Array, " n_in"],
    weights: Float[Array, "n_in n_out"],
    tau_m: Float[ArrayLike, "*n_out"],
    tau_s: Float[ArrayLike, "*n_out"],
    theta_c: Float[ArrayLike, "*n_out"],
    *,
    interpret: bool = False,
) -> tuple[Array, Array, Array, Array, Array]:
    """`fsnn.core.spike_time._causal_prefix` as a Pallas kernel: ``(fired, t_k, B, D, peak)``, each ``[n_out]``.

    ``ts`` are one sample's sorted input times and ``order`` the weight rows in that order;
    ``tau_m, tau_s, theta_c`` are scalars or one value per neuron. ``interpret=True`` runs the
    kernel on any backend (slowly), for tests.
    """
    n_in, n_out = weights.shape
    dtype = weights.dtype
    length, width = _pow2(n_in), _pow2(n_out)
    finite, gap, span = _gaps(ts)

    def pad(x, fill):
        return jnp.concatenate([x, jnp.full((length - n_in,), fill, x.dtype)])

    operands = (
        pad(ts, jnp.inf),
        pad(gap, 0.0),
        pad(span, jnp.inf),
        pad(finite.astype(jnp.int32), 0),
        pad(order.astype(jnp.int32), 0),
        jnp.pad(weights, ((0, length - n_in), (0, width - n_out))),
        *(_as_row(x, width, dtype) for x in (tau_m, tau_s, theta_c)),
    )

    def kernel(t_ref, gap_ref, span_ref, fin_ref, order_ref, w_ref, tau_m_ref, tau_s_ref, theta_ref, *out_refs):
        # The step of `_causal_prefix` (`_walk_step`); ``fired`` is int32 here, as run on the H100.
        tau_m, tau_s, theta = tau_m_ref[...], tau_s_ref[...], theta_ref[...]

        def step(k, carry):
            big_b, big_d, fired, t_k, b_k, d_k, x_k = carry
            row = w_ref[order_ref[k], :]
            big_b, big_d, x_peak, crosses = _walk_step(
                solver, big_b, big_d, gap_ref[k], span_ref[k], fin_ref[k] > 0, row, tau_m, tau_s, theta
            )
            new = crosses & (fired == 0)
            return (
                big_b,
                big_d,
                jnp.where(new, 1, fired),
                jnp.where(new, t_ref[k], t_k),
                jnp.where(new, big_b, b_k),
                jnp.where(new, big_d, d_k),
                jnp.where(new, x_peak, x_k),
            )

        zeros = jnp.zeros((width,), dtype)
        init = (zeros, zeros, jnp.zeros((width,), jnp.int32), zeros, zeros, zeros, zeros)
        found = jax.lax.fori_loop(0, n_in, step, init)[2:]
        for ref, value in zip(out_refs, found):
            ref[...] = value

    shapes = [jax.ShapeDtypeStruct((width,), jnp.int32)] + [jax.ShapeDtypeStruct((width,), dtype)] * 4
    params = None
    if not interpret:
        from jax.experimental.pallas import triton as plgpu

        warps = NUM_WARPS or max(1, min(8, width // 64))
        params = plgpu.CompilerParams(num_warps=warps, num_stages=NUM_STAGES)
    fired, t_k, b, d, peak = pl.pallas_call(
        kernel, out_shape=shapes, interpret=interpret, compiler_params=params, name="fsnn_causal_prefix"
    )(*operands)
    return fired[:n_out] > 0, t_k[:n_out], b[:n_out], d[:n_out], peak[:n_out]
