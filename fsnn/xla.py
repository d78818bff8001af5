"""Compiler options for fsnn's own compiled programs (training epochs, evaluation, benchmarks).

XLA:CPU's YNNPACK fusions (jaxlib 0.10) fuse the reduction that gives the membrane slope at the
spike, ``sum_i w_ij kappa'_ij``, into its ``[n_in, n_out]`` consumer in the backward pass and
recompute it for every element: a 256-128-10 training step at batch 50 took 420 ms instead of 34 ms.
`jit` turns those fusions off on CPU. Code that calls the core functions under its own `jax.jit`
can pass ``compiler_options=fsnn.xla.CPU_OPTIONS`` (or set ``XLA_FLAGS``) for the same effect.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["CPU_OPTIONS", "jit"]

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _cpu_options_known() -> bool:
    """Whether this XLA accepts `CPU_OPTIONS` (an unknown option fails compilation)."""
    try:
        jax.jit(jnp.negative, compiler_options=CPU_OPTIONS)(jnp.zeros(()))
    except jax.errors.JaxRuntimeError:
        return False
    return True


def jit(fn, **kwargs):
    """`jax.jit` with `CPU_OPTIONS` when the default backend is a CPU and XLA knows them."""
    if jax.default_backend() == "cpu" and _cpu_options_known():
        kwargs["compiler_options"] = {**CPU_OPTIONS, **kwargs.get("compiler_options", {})}
    return jax.jit(fn, **kwargs)
