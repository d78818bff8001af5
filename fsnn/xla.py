"""Compiler options and caches for fsnn's own compiled programs (training epochs, evaluation, benchmarks).

XLA:CPU's YNNPACK fusions (jaxlib 0.10) fuse the reduction that gives the membrane slope at the
spike, ``sum_i w_ij kappa'_ij``, into its ``[n_in, n_out]`` consumer in the backward pass and
recompute it for every element: a 256-128-10 training step at batch 50 took 420 ms instead of 34 ms.
`jit` turns those fusions off on CPU. Code that calls the core functions under its own `jax.jit`
can pass ``compiler_options=fsnn.xla.CPU_OPTIONS`` (or set ``XLA_FLAGS``) for the same effect.

`use_compilation_cache` keeps compiled programs on disk across processes (the command line turns it
on): a later run, seed, resume, ``fsnn eval`` or ``fsnn plot`` of the same shapes loads them.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import platform
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["CPU_OPTIONS", "cache_dir", "cpu_identity", "jit", "use_compilation_cache"]

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _cpu_options_known() -> bool:
    """Whether this XLA accepts `CPU_OPTIONS` (an unknown option fails compilation)."""
    try:
        jax.jit(jnp.negative, compiler_options=CPU_OPTIONS)(jnp.zeros(()))
    except jax.errors.JaxRuntimeError:
        return False
    return True


def jit(fn: Callable[..., Any], **kwargs: Any) -> Callable[..., Any]:
    """`jax.jit` with `CPU_OPTIONS` when the default backend is a CPU and XLA knows them."""
    if jax.default_backend() == "cpu" and _cpu_options_known():
        kwargs["compiler_options"] = {**CPU_OPTIONS, **kwargs.get("compiler_options", {})}
    return jax.jit(fn, **kwargs)


def cache_dir() -> pathlib.Path:
    """fsnn's cache folder: ``$FSNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/fsnn`` or ``~/.cache/fsnn``."""
    if os.environ.get("FSNN_CACHE_DIR"):
        return pathlib.Path(os.environ["FSNN_CACHE_DIR"])
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "fsnn"


def cpu_identity() -> str:
    """The host CPU's model and feature flags, as far as known (what native code is compiled for)."""
    try:
        lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    fields = ("model name", "flags", "Features", "CPU implementer", "CPU part")
    return "\n".join(sorted({line.strip() for line in lines if line.split(":")[0].strip() in fields}))


def use_compilation_cache(min_compile_seconds: float = 0.2) -> pathlib.Path | None:
    """Keep compiled programs that took at least ``min_compile_seconds`` in JAX's persistent cache.

    The folder is ``cache_dir()/xla/<jaxlib and CPU>`` (compiled CPU code is specific to both, so a
    home folder shared by different machines stays safe) unless JAX already has one
    (``JAX_COMPILATION_CACHE_DIR``); ``FSNN_COMPILATION_CACHE=0`` leaves JAX as it is. Call before
    anything compiles (later calls change nothing for programs already compiled). Returns the
    folder in use, or ``None``. Some CPUs' XLA loader rejects cached entries and recompiles
    (jax-ml/jax#38445): slower, never wrong.
    """
    if os.environ.get("FSNN_COMPILATION_CACHE", "1") == "0":
        return None
    if jax.config.jax_compilation_cache_dir:
        return pathlib.Path(jax.config.jax_compilation_cache_dir)
    import jaxlib

    key = hashlib.sha256(f"{jaxlib.__version__}\n{cpu_identity()}".encode()).hexdigest()[:16]
    path = cache_dir() / "xla" / key
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    return path
