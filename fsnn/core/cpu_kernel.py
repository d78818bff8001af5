"""The causal-prefix search of a layer, and its training backward pass, as native CPU kernels (XLA FFI calls).

On CPU, XLA runs `fsnn.core.spike_time`'s search as a few dozen small loops per layer (a sort, a
rank search, a scan, the peak test), and in a small network such as Yin-Yang's that per-op work,
not arithmetic, bounds a training step. ``cpu_kernel.cc`` does the whole search of a batch in one
call: sort each sample's inputs, walk them once, stop testing a neuron once it has fired and stop
the walk once all have (same prefixes as `~fsnn.core.spike_time._causal_prefix`; tested against
it in float64). A batch is split over XLA's intra-op threads (each sample is independent). The
spike-time solve stays in JAX. A second call is the backward pass of a layer for a whole batch in
first-order training (`layer_vjp_native`, used by `fsnn.core.batch_grad`); every other gradient
(the custom JVP of `fsnn.core.spike_time`) stays in JAX.

The kernel is compiled on first use with the system C++ compiler (``$CXX``, else ``c++``) for this
CPU's vector units against the FFI headers that ship with jaxlib, into ``$FSNN_CACHE_DIR`` (default
``~/.cache/fsnn``), one library per source, jaxlib version, compiler, flags and CPU; later processes
load it. Without a compiler fsnn warns once and uses the XLA search; ``FSNN_NATIVE=0`` chooses that
silently.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shlex
import subprocess
import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike
from jaxtyping import Array, ArrayLike, Bool, Float

from fsnn.xla import cache_dir, cpu_identity

__all__ = ["available", "causal_prefix_native", "layer_vjp_native", "library_path", "supports"]

_SOURCE = pathlib.Path(__file__).with_name("cpu_kernel.cc")
_TARGETS = {np.dtype(np.float32): "fsnn_causal_prefix_f32", np.dtype(np.float64): "fsnn_causal_prefix_f64"}
_VJP_TARGETS = {np.dtype(np.float32): "fsnn_layer_vjp_f32", np.dtype(np.float64): "fsnn_layer_vjp_f64"}
_SYMBOLS = {
    "fsnn_causal_prefix_f32": "FsnnCausalPrefixF32",
    "fsnn_causal_prefix_f64": "FsnnCausalPrefixF64",
    "fsnn_layer_vjp_f32": "FsnnLayerVjpF32",
    "fsnn_layer_vjp_f64": "FsnnLayerVjpF64",
}
_SOLVER_IDS = {"lambertw": 0, "quadratic": 1, "root": 2}
# IEEE arithmetic kept, and no fused multiply-adds: the same results whatever the vector unit.
_FLAGS = ("-O3", "-fno-trapping-math", "-fno-math-errno", "-ffp-contract=off", "-std=c++17", "-shared", "-fPIC")
# For this machine's vector units (e.g. AVX2: ≈ 1.7x on Yin-Yang's hidden layer, BENCHMARKS.md); the library is
# keyed by the CPU (`fsnn.xla.cpu_identity`), and a compiler that does not know the flag builds without it.
_ISA_FLAGS = ("-march=native",)


def _compiler() -> list[str]:
    return shlex.split(os.environ.get("CXX", "c++"))


def library_path() -> pathlib.Path:
    """Where the compiled kernel for this source, jaxlib, compiler and CPU lives (or will)."""
    import jaxlib

    flags = " ".join(_compiler() + list(_FLAGS + _ISA_FLAGS))
    key = "\n".join([_SOURCE.read_text(), jaxlib.__version__, flags, platform.machine(), cpu_identity()])
    return cache_dir() / f"cpu_kernel-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


def _build(target: pathlib.Path) -> None:
    """Compile the kernel into ``target`` atomically (concurrent builds each write their own file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    command = [*_compiler(), *_FLAGS, f"-I{jax.ffi.include_dir()}", str(_SOURCE), "-o", tmp]
    try:
        done = subprocess.run([*command, *_ISA_FLAGS], capture_output=True, text=True, check=False)
        if done.returncode != 0:  # e.g. a compiler that does not know -march=native
            done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise OSError(f"`{shlex.join(command)}` failed:\n{done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load(path: pathlib.Path) -> ctypes.CDLL:
    """The library at ``path``, built first if missing; a cached file that does not load is rebuilt."""
    if path.exists():
        try:
            return ctypes.cdll.LoadLibrary(str(path))
        except OSError:  # truncated or corrupt (e.g. a full disk during an earlier build)
            path.unlink(missing_ok=True)
    _build(path)
    return ctypes.cdll.LoadLibrary(str(path))


@functools.cache
def available() -> bool:
    """Whether the native kernel is built, loaded and registered with XLA (builds it if needed)."""
    if os.environ.get("FSNN_NATIVE", "1") == "0":
        return False
    try:
        library = _load(library_path())
    except OSError as error:  # no compiler, a failed build, an unwritable cache
        if jax.default_backend() != "cpu":  # traced for the CPU branch of a GPU program: nothing runs there
            return False
        warnings.warn(
            f"fsnn: the native CPU kernel is unavailable, the XLA search runs instead (slower): {error}\n"
            "Install a C++17 compiler (or set CXX), or set FSNN_NATIVE=0 to silence this.",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    for target, symbol in _SYMBOLS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    return True


def supports(dtype: DTypeLike) -> bool:
    """Whether the kernel runs layers of ``dtype`` (float32 and float64)."""
    return np.dtype(dtype) in _TARGETS


def causal_prefix_native(
    solver: str,
    input_times: Float[Array, " n_in"],
    weights: Float[Array, "n_in n_out"],
    tau_m: Float[ArrayLike, "*n_out"],
    tau_s: Float[ArrayLike, "*n_out"],
    theta_c: Float[ArrayLike, "*n_out"],
) -> tuple[Bool[Array, " n_out"], Array, Array, Array, Array]:
    """`fsnn.core.spike_time._causal_prefix` of one sample: ``(fired, t_k, B, D, peak)``, each ``[n_out]``.

    ``input_times`` unsorted (``inf`` silent); ``tau_m, tau_s, theta_c`` scalars or ``[n_out]``.
    Under `jax.vmap` the batch goes to the kernel in one call (unbatched operands are not copied).
    """
    if not available():
        raise RuntimeError("The native CPU kernel is unavailable (see the warning); use the XLA search.")
    n_out = weights.shape[1]
    dtype = weights.dtype
    taus = [jnp.asarray(x, dtype) for x in (tau_m, tau_s)]
    if any(x.ndim for x in taus):  # per-neuron time constants: both as rows
        taus = [jnp.broadcast_to(x, (n_out,)) for x in taus]
    tau_m, tau_s, theta_c = (x.reshape(-1) for x in (*taus, jnp.asarray(theta_c, dtype)))
    out = jax.ShapeDtypeStruct((n_out,), dtype)
    call = jax.ffi.ffi_call(
        _TARGETS[np.dtype(dtype)],
        (jax.ShapeDtypeStruct((n_out,), jnp.bool_), out, out, out, out),
        vmap_method="expand_dims",
    )
    fired, t_k, big_b, big_d, peak = call(
        input_times, weights, tau_m, tau_s, theta_c, solver=np.int64(_SOLVER_IDS[solver])
    )
    return fired, t_k, big_b, big_d, peak


def layer_vjp_native(
    solver: str,
    input_times: Float[Array, "batch n_in"],
    weights: Float[Array, "n_in n_out"],
    times: Float[Array, "batch n_out"],
    cotangent: Float[Array, "batch n_out"],
    constants: Float[Array, " 5"],
) -> tuple[Float[Array, "batch n_in"], Float[Array, "n_in n_out"], Float[Array, ""]]:
    """The backward pass of a layer for a batch (`fsnn.core.batch_grad`): the input times' and the
    weights' cotangents and the number of dropped gradient columns.

    ``constants``: the kernel's ``tau_m`` (``tau_s`` for lambertw, ``2 tau_s`` for quadratic),
    ``tau_s``, the capacitance, the slope floor and the largest per-sample weight-gradient entry
    kept (``inf``: none dropped). Under `jax.vmap` (e.g. a sweep's runs) one call takes them all.
    """
    if not available():
        raise RuntimeError("The native CPU kernel is unavailable (see the warning); use the XLA backward.")
    dtype = weights.dtype
    call = jax.ffi.ffi_call(
        _VJP_TARGETS[np.dtype(dtype)],
        (
            jax.ShapeDtypeStruct(input_times.shape, dtype),
            jax.ShapeDtypeStruct(weights.shape, dtype),
            jax.ShapeDtypeStruct((1,), dtype),
        ),
        vmap_method="expand_dims",
    )
    grad_times, grad_weights, dropped = call(
        input_times, weights, times, cotangent, constants, solver=np.int64(_SOLVER_IDS[solver])
    )
    return grad_times, grad_weights, dropped[0]
