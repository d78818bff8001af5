r"""Exact first-spike times of a layer of LIF neurons, with exact gradients.

Algorithm (one sample, one layer; Göltz et al. 2021, Methods, made O(n_in n_out)):

1. Sort the inputs once (on CPU from single-operand integer sorts, several times faster in XLA
   than the comparator sort behind `jnp.argsort`; see `_argsort_by_int_keys`). For every prefix
   ``k`` of the sorted inputs keep, relative to the prefix's own last input time ``t_k`` (so
   nothing overflows, whatever the times),

   .. math:: B_k = \sum_{i\le k} w_i e^{-(t_k-t_i)/\tau_s}, \qquad
             D_k = \sum_{i\le k} w_i \kappa(t_k - t_i) = C\,(V(t_k) - E_\ell).

   Both follow from a linear recurrence (an affine map per input): O(n_in n_out) work, no
   ``n_in x n_in`` mask. Wide layers run it as one sequential `jax.lax.scan` that keeps only the
   first crossing prefix (O(n_out) memory); narrow layers (``n_out <= PARALLEL_MAX_OUT``) scan
   for the ``B, D`` of all prefixes and test them for a crossing at once. On GPUs and TPUs, where
   each step of a sequential scan is a kernel launch, every layer takes ``CHUNK`` inputs per step
   instead, all prefixes of a chunk at once (O(CHUNK n_out) memory); on CUDA GPUs a Pallas kernel
   does the one-input walk in registers (`fsnn.core.prefix_kernel`, O(n_out) memory). On CPUs the
   whole search of a batch is one native call (`fsnn.core.cpu_kernel`, built on first use with the
   system C++ compiler; the XLA scans above are its fallback and reference). On the prefix's
   interval ``t_k + x``, ``x in [0, t_{k+1} - t_k]``,
   :math:`U(x) = C(V - E_\ell) = D_k e^{-x/\tau_m} + B_k \kappa(x)`.
2. ``U`` has at most one stationary point, a maximum, at (stable for every ``tau_m/tau_s``)
   :math:`x^* = \tau_s\,\psi(\tau_s/\tau_m - 1) - (D_k/B_k)\,\psi(D_k\delta/B_k)`,
   :math:`\psi(y) = \log(1+y)/y`. The prefix holds the first spike iff ``U`` at ``x*`` clipped to the
   interval reaches ``C (theta - E_l)``; the first such prefix is the causal set. No Lambert W per
   prefix: the closed form (or root solve) runs once per neuron, on the causal prefix.
3. Solve on ``[0, x_peak]`` where ``U`` is increasing: Lambert W (``tau_m = tau_s``), the quadratic
   (``tau_m = 2 tau_s``), or a safeguarded Newton-bisection (any ratio) that stops once its Newton
   steps no longer move (at most 24 steps in float32, 40 in float64).
4. Gradients come from the implicit-function theorem at the spike, for every solver:
   :math:`dT = -(\partial V/\partial\theta \cdot d\theta) / (\partial V / \partial t)` with the exact
   membrane (`fsnn.core.neuron.membrane_potential`), through `jax.custom_jvp` (forward and reverse
   mode). Silent neurons (``T = inf``) get zero gradient. The slope is floored at
   ``sqrt(eps) (theta - E_l) / tau_s`` so that a membrane that only touches threshold gives a large
   but finite gradient instead of ``inf``/``nan``.

Conventions: ``inf`` marks a silent input or output; a ``nan`` input time is treated as silent
(``inf``): it contributes nothing and receives zero gradient.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, ArrayLike, Float

from fsnn.core.lambertw import lambertw
from fsnn.core.neuron import LIFParams, checked_params, log1p_ratio, psp_kernel, psp_kernel_unmasked

__all__ = [
    "SOLVERS",
    "resolve_solver",
    "layer_spike_times",
    "spike_times_at",
    "first_spike_time",
    "layer_membrane",
]

Solver = Literal["auto", "lambertw", "quadratic", "root"]
# On CPU, layers with at most this many neurons test all prefixes at once, wider ones one input
# at a time. On CUDA GPUs float32 layers run the one-pass walk as a Pallas kernel
# (`fsnn.core.prefix_kernel`, if ``PALLAS``); elsewhere every layer searches ``CHUNK`` inputs per
# step. Measured on an H100 in BENCHMARKS.md (float64 has not run through the kernel there yet).
PARALLEL_MAX_OUT = 16
CHUNK = 64
PALLAS = True
# On CPU the search runs as a native kernel (`fsnn.core.cpu_kernel`, built on first use) unless
# this is off (`xla_search`) or no C++ compiler is found; the XLA search above is the fallback.
NATIVE = True
SOLVERS = ("lambertw", "quadratic", "root")


@contextlib.contextmanager
def xla_search(enabled: bool = True) -> Iterator[None]:
    """Trace programs with the XLA search on CPU instead of the native kernel (while ``enabled``).

    For programs split over several devices (their batch, or a sweep's runs): XLA cannot split the
    kernel's custom call, so it would gather everything onto every device for it. Read at trace
    time, like `NATIVE`.
    """
    global NATIVE
    saved = NATIVE
    NATIVE = NATIVE and not enabled
    try:
        yield
    finally:
        NATIVE = saved


def _concrete(x) -> np.ndarray | None:
    """The value of ``x`` as a NumPy array, or ``None`` if it is traced."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def resolve_solver(params: LIFParams, solver: Solver = "auto") -> str:
    """The solver to use for ``params``; validates concrete parameter values.

    ``"auto"`` picks ``"lambertw"`` when ``tau_m == tau_s`` everywhere, ``"quadratic"`` when
    ``tau_m == 2 tau_s`` everywhere and ``"root"`` otherwise; it needs concrete (not traced) time
    constants. Closed-form solvers are checked against concrete parameters.
    """
    if solver not in ("auto", *SOLVERS):
        raise ValueError(f"`solver` must be one of 'auto', {', '.join(map(repr, SOLVERS))}; got {solver!r}.")
    params = checked_params(params)
    tau_m, tau_s = _concrete(params.tau_m), _concrete(params.tau_s)
    theta, e_leak = _concrete(params.threshold), _concrete(params.e_leak)
    for name, val in (("tau_m", tau_m), ("tau_s", tau_s), ("g_leak", _concrete(params.g_leak))):
        if val is not None and not np.all(val > 0):
            raise ValueError(f"`params.{name}` must be > 0; got {val}.")
    if theta is not None and e_leak is not None and not np.all(theta > e_leak):
        raise ValueError(f"`params.threshold` must exceed `params.e_leak`; got {theta} and {e_leak}.")
    if tau_m is None or tau_s is None:
        if solver == "auto":
            raise ValueError(
                "`solver='auto'` needs concrete `tau_m` and `tau_s`, but they are traced (e.g. "
                "trainable or passed through jit). Pass `solver='root'` (any ratio), or "
                "'lambertw' (tau_m == tau_s) / 'quadratic' (tau_m == 2 tau_s) if that holds."
            )
        return solver
    ratio_one, ratio_two = np.all(tau_m == tau_s), np.all(tau_m == 2 * tau_s)
    if solver == "auto":
        return "lambertw" if ratio_one else "quadratic" if ratio_two else "root"
    if solver == "lambertw" and not ratio_one:
        raise ValueError("`solver='lambertw'` needs tau_m == tau_s; use solver='root' or 'auto'.")
    if solver == "quadratic" and not ratio_two:
        raise ValueError("`solver='quadratic'` needs tau_m == 2 * tau_s; use solver='root' or 'auto'.")
    return solver


def _sort_key(t: Array) -> Array:
    """Integers in the order of the floats ``t`` (no nan; ``-0.0`` counts as ``0.0``)."""
    t = jnp.where(t == 0, jnp.zeros_like(t), t)  # -0.0 -> 0.0
    bits = jax.lax.bitcast_convert_type(t, jnp.int64 if t.dtype == jnp.float64 else jnp.int32)
    return jnp.where(bits < 0, bits ^ jnp.iinfo(bits.dtype).max, bits)


def _sorted_keys_and_ranks(t: Array) -> tuple[Array, Array]:
    """The sorted integer keys of ``t`` and each input's rank among them (the first of equal keys)."""
    key = _sort_key(t)
    sorted_key = jax.lax.sort(key)
    return sorted_key, jnp.searchsorted(sorted_key, key, side="left", method="scan_unrolled").astype(key.dtype)


def _argsort_by_int_keys(t: Float[Array, " n"]) -> Array:
    """Stable argsort of one row from single-operand integer sorts.

    XLA:CPU sorts a lone integer array several times faster than the (key, index) pair behind
    `jnp.argsort`, whose comparator it calls per comparison. So: sort the keys, rank every input
    among them (the first of equal keys), then sort ``rank * n + index``, exact and stable.
    """
    n = t.shape[0]
    _, rank = _sorted_keys_and_ranks(t)
    return (jax.lax.sort(rank * n + jnp.arange(n, dtype=rank.dtype)) % n).astype(jnp.int32)


def _argsort(t: Float[Array, " n"]) -> Array:
    """Stable argsort for CPU: `_argsort_by_int_keys` where ``rank * n + index`` fits its integers."""
    if t.dtype == jnp.float32 and t.shape[0] ** 2 >= 2**31:
        return jnp.argsort(t).astype(jnp.int32)
    return _argsort_by_int_keys(t)


def _row(x: Array) -> Array:
    """A per-neuron parameter as a row broadcastable against ``[n_in, n_out]``."""
    return x if x.ndim == 0 else x[None, :]


def _scaled_u(x, b, d, tau_m, tau_s):
    """``U(x) = D e^{-x/tau_m} + B kappa(x)`` and its slope ``B e^{-x/tau_s} - U/tau_m`` (finite ``x >= 0``)."""
    u = d * jnp.exp(-x / tau_m) + b * psp_kernel_unmasked(x, tau_m, tau_s)
    return u, b * jnp.exp(-x / tau_s) - u / tau_m


def _peak(solver, big_b, big_d, span, tau_m, tau_s):
    """Where ``U`` stops rising on ``[0, span]`` and ``U`` there (``U -> 0`` as ``x -> inf``).

    The place is returned in the solver's own variable: ``x`` for ``lambertw`` and ``root``,
    ``q = exp(-x / tau_m)`` for ``quadratic``. The closed-form ratios need one ``exp`` (or none)
    per neuron and input; the general ratio needs logs too.
    """
    b_safe = jnp.where(big_b > 0, big_b, 1.0)  # B <= 0 never crosses: masked by the caller
    if solver == "lambertw":  # U = e^{-x/tau} (D + B x), maximum at x = tau - D/B
        x_peak = jnp.clip(tau_s - big_d / b_safe, 0.0, span)
        return x_peak, jnp.exp(-x_peak / tau_s) * (big_d + big_b * x_peak)
    if solver == "quadratic":  # U = (D + tau_m B) q - tau_m B q^2, maximum at q = (B + D/tau_m) / 2B
        q_peak = jnp.clip((big_b + big_d / tau_m) / (2.0 * b_safe), jnp.exp(-span / tau_m), 1.0)
        return q_peak, (big_d + tau_m * big_b) * q_peak - tau_m * big_b * q_peak * q_peak
    delta = 1.0 / tau_s - 1.0 / tau_m
    ratio = big_d * delta / b_safe
    stationary = (big_b > 0) & (ratio > -1.0)
    x_star = tau_s * log1p_ratio(tau_s / tau_m - 1.0) - big_d / b_safe * log1p_ratio(jnp.where(stationary, ratio, 0.0))
    rising = big_b - big_d / tau_m > 0
    x_star = jnp.where(stationary, x_star, jnp.where(rising, jnp.inf, 0.0))
    x_peak = jnp.clip(x_star, 0.0, span)
    at_inf = jnp.isinf(x_peak)
    u_peak, _ = _scaled_u(jnp.where(at_inf, 0.0, x_peak), big_b, big_d, tau_m, tau_s)
    return x_peak, jnp.where(at_inf, 0.0, u_peak)


def _decays(gap, tau_m, tau_s):
    """Per-input factors of the prefix recurrence ``B' = a B + w``, ``D' = b D + c B`` (``gap >= 0``)."""
    alpha = jnp.exp(-gap / tau_s)
    return alpha, jnp.exp(-gap / tau_m), psp_kernel_unmasked(gap, tau_m, tau_s)


def _advance(big_b, big_d, decays, row):
    """``B, D`` after one more input: the recurrence of `_decays` (``D`` takes the old ``B``)."""
    alpha, beta, gamma = decays
    return alpha * big_b + row, beta * big_d + gamma * big_b


def _gaps(ts):
    """Gap to the previous sorted input and span to the next (``inf`` after the last finite one)."""
    finite = jnp.isfinite(ts)
    gap = jnp.where(finite, jnp.concatenate([jnp.zeros_like(ts[:1]), ts[1:] - ts[:-1]]), 0.0)
    span = jnp.concatenate([jnp.where(finite[1:], ts[1:] - ts[:-1], jnp.inf), jnp.full_like(ts[:1], jnp.inf)])
    return finite, gap, span


def _sorted_rows_by_int_keys(t, weights):
    """Sorted times and weight rows from one integer sort; inputs at equal times share one summed row.

    The rows of a tie group after its first are zero (an input with no weight at no time gap
    leaves every prefix sum as it is), so no permutation is needed: a scatter-add by rank.
    """
    sorted_key, rank = _sorted_keys_and_ranks(t)
    bits = jnp.where(sorted_key < 0, sorted_key ^ jnp.iinfo(sorted_key.dtype).max, sorted_key)  # `_sort_key` inverted
    return jax.lax.bitcast_convert_type(bits, t.dtype), jnp.zeros_like(weights).at[rank].add(weights)


def _compose(first, second):
    """Two steps of the prefix recurrence as one: apply ``first``, then ``second``.

    A step ``(a, b, g, w, d)`` maps ``(B, D)`` to ``(a B + w, b D + g B + d)`` (`_decays`).
    """
    a1, b1, g1, w1, d1 = first
    a2, b2, g2, w2, d2 = second
    return a1 * a2, b1 * b2, g2 * a1 + b2 * g1, a2 * w1 + w2, g2 * w1 + b2 * d1 + d2


def _first_crossing(solver, ts, span, finite, big_b, big_d, tau_m, tau_s, theta_c):
    """The first of a run of prefixes (``big_b, big_d [k, n_out]``) whose interval holds a crossing.

    ``tau_m, tau_s, theta_c`` as rows (`_row`). Returns whether one does and its time, ``B``, ``D``
    and peak (each ``[n_out]``).
    """
    peak, u_peak = _peak(solver, big_b, big_d, span[:, None], tau_m, tau_s)
    crosses = finite[:, None] & (big_b > 0) & (u_peak >= theta_c)
    k = jnp.argmax(crosses, axis=0)[None, :]

    def pick(x):
        return jnp.take_along_axis(jnp.broadcast_to(x, crosses.shape), k, axis=0)[0]

    return jnp.any(crosses, axis=0), pick(ts[:, None]), pick(big_b), pick(big_d), pick(peak)


def _prefix_block(solver, ts, gap, span, finite, rows, b0, d0, tau_m, tau_s, theta_c):
    """Every prefix of a block of sorted inputs at once, from the state ``(b0, d0)`` before it.

    `jax.lax.associative_scan` (log depth) of the block's steps, then `_first_crossing`. Returns
    its result and the state after the block.
    """
    alpha, beta, gamma = _decays(gap[:, None], tau_m, tau_s)
    w = jnp.where(finite[:, None], rows, 0.0)
    elems = tuple(jnp.broadcast_to(e, w.shape) for e in (alpha, beta, gamma, w, jnp.zeros_like(w)))
    a, b, g, w_sum, d_sum = jax.lax.associative_scan(_compose, elems, axis=0)
    b0, d0 = b0[None, :], d0[None, :]
    big_b, big_d = a * b0 + w_sum, b * d0 + g * b0 + d_sum
    found = _first_crossing(solver, ts, span, finite, big_b, big_d, tau_m, tau_s, theta_c)
    return found, (big_b[-1], big_d[-1])


def _causal_prefix_all(solver, ts, rows, tau_m, tau_s, theta_c):
    """Every prefix's ``B, D`` from one sequential scan, then `_first_crossing` over all of them.

    ``ts`` are the sorted times and ``rows`` their weight rows (`_sorted_rows_by_int_keys`). Same
    result as `_causal_prefix`; faster for narrow layers: the scan's step is two multiply-adds
    (under `jax.vmap` on ``[batch, n_out]``, the batch innermost) and the peak test, with its
    exponentials, runs once over all prefixes. On this CPU 3x faster for 121 -> 3 at batch 150
    than the log-depth `jax.lax.associative_scan` of `_prefix_block`. Memory O(n_in n_out) per sample.
    """
    finite, gap, span = _gaps(ts)
    tau_m, tau_s, theta_c = map(_row, (tau_m, tau_s, theta_c))
    alpha, beta, gamma = _decays(gap[:, None], tau_m, tau_s)
    w = jnp.where(finite[:, None], rows, 0.0)

    def step(state, inputs):
        *decays, row = inputs
        state = _advance(*state, decays, row)
        return state, state

    zeros = jnp.zeros(rows.shape[1:], rows.dtype)
    _, (big_b, big_d) = jax.lax.scan(step, (zeros, zeros), (alpha, beta, gamma, w))
    return _first_crossing(solver, ts, span, finite, big_b, big_d, tau_m, tau_s, theta_c)


def _causal_prefix_chunked(solver, ts, order, weights, tau_m, tau_s, theta_c, chunk: int):
    """`_causal_prefix` taking ``chunk`` sorted inputs per step, each chunk by `_prefix_block`.

    ``chunk = 1`` is the one-input walk, ``chunk >= n_in`` the all-prefix search; between them
    ``ceil(n_in / chunk)`` sequential steps and O(chunk n_out) memory per sample. Padding inputs
    are silent: a step with no weight and no gap leaves the state as it is.
    """
    n_in, n_out = weights.shape
    chunk = max(1, min(chunk, n_in))
    pad = -n_in % chunk
    finite, gap, span = _gaps(ts)

    def blocks(x, fill):
        return jnp.concatenate([x, jnp.full((pad,), fill, x.dtype)]).reshape(-1, chunk)

    xs = (blocks(ts, jnp.inf), blocks(gap, 0), blocks(span, jnp.inf), blocks(finite, False), blocks(order, 0))
    rows_params = tuple(map(_row, (tau_m, tau_s, theta_c)))

    def step(carry, block):
        state, found = carry
        t, g, sp, fin, idx = block
        (crosses, *candidate), state = _prefix_block(solver, t, g, sp, fin, weights[idx], *state, *rows_params)
        return (state, _keep_first(found, crosses, candidate)), None

    zeros = jnp.zeros((n_out,), weights.dtype)
    init = ((zeros, zeros), (jnp.zeros((n_out,), bool), zeros, zeros, zeros, zeros))
    (_, found), _ = jax.lax.scan(step, init, xs)
    return found


def _keep_first(found, crosses, candidate):
    """The first crossing prefix so far: ``found = (fired, t, B, D, peak)`` unless ``crosses`` is new here."""
    fired, *kept = found
    new = crosses & ~fired
    return (fired | new, *(jnp.where(new, c, k) for c, k in zip(candidate, kept)))


def _walk_step(solver, big_b, big_d, gap, span, finite, row, tau_m, tau_s, theta_c):
    """One input of the walk: ``B, D`` after it, the peak on its interval and whether that crosses."""
    big_b, big_d = _advance(big_b, big_d, _decays(gap, tau_m, tau_s), jnp.where(finite, row, 0.0))
    x_peak, u_peak = _peak(solver, big_b, big_d, span, tau_m, tau_s)
    return big_b, big_d, x_peak, finite & (big_b > 0) & (u_peak >= theta_c)


def _causal_prefix(solver, ts, order, weights, tau_m, tau_s, theta_c):
    """Scan the sorted inputs once; return the first prefix whose interval holds a crossing.

    ``ts`` are the sorted times and ``order`` the rows of ``weights`` in that order. The scan
    carries ``B, D`` of the current prefix (relative to its last input), the index of the first
    crossing prefix and its ``B, D``, and reads one weight row per step: O(n_out) memory per
    sample, whatever n_in. The crossing's time and peak are looked up once after the scan: every
    carried array is read and written at each of the n_in steps, and carrying five arrays instead
    of seven (time and peak selected at every step) made the 784 -> 350 walk 1.6-2x faster on
    this CPU (BENCHMARKS.md).
    """
    n_in, n_out = weights.shape
    finite, gap, span = _gaps(ts)
    zeros = jnp.zeros((n_out,), weights.dtype)
    none = jnp.full((n_out,), n_in, jnp.int32)  # no crossing yet

    def step(carry, inputs):
        big_b, big_d, k, b_k, d_k = carry
        i, g, sp, fin, row = inputs
        big_b, big_d, _, crosses = _walk_step(solver, big_b, big_d, g, sp, fin, weights[row], tau_m, tau_s, theta_c)
        new = crosses & (k == n_in)
        return (big_b, big_d, jnp.where(new, i, k), jnp.where(new, big_b, b_k), jnp.where(new, big_d, d_k)), None

    steps = jnp.arange(n_in, dtype=jnp.int32)
    (_, _, k, b_k, d_k), _ = jax.lax.scan(step, (zeros, zeros, none, zeros, zeros), (steps, gap, span, finite, order))
    k_safe = jnp.minimum(k, n_in - 1)
    x_peak, _ = _peak(solver, b_k, d_k, span[k_safe], tau_m, tau_s)
    return k < n_in, ts[k_safe], b_k, d_k, x_peak


def native_on_cpu(dtype) -> bool:
    """Whether CPUs run the native kernel for layers of ``dtype`` now (`NATIVE`; builds it if needed)."""
    from fsnn.core import cpu_kernel

    return NATIVE and cpu_kernel.supports(dtype) and cpu_kernel.available()


def _search_cpu(solver, input_times, weights, tau_m, tau_s, theta_c):
    """The causal prefix on CPU: the native kernel (`native_on_cpu`), else `_search_xla_cpu`."""
    if native_on_cpu(weights.dtype):
        from fsnn.core.cpu_kernel import causal_prefix_native

        return causal_prefix_native(solver, input_times, weights, tau_m, tau_s, theta_c)
    return _search_xla_cpu(solver, input_times, weights, tau_m, tau_s, theta_c)


def _search_xla_cpu(solver, input_times, weights, tau_m, tau_s, theta_c):
    """The causal prefix in XLA on CPU: narrow layers all prefixes at once, wide ones one input per step."""
    if weights.shape[1] <= PARALLEL_MAX_OUT:
        ts, rows = _sorted_rows_by_int_keys(input_times, weights)
        return _causal_prefix_all(solver, ts, rows, tau_m, tau_s, theta_c)
    order = _argsort(input_times)
    return _causal_prefix(solver, input_times[order], order, weights, tau_m, tau_s, theta_c)


def _search_chunked(solver, input_times, weights, tau_m, tau_s, theta_c):
    """The causal prefix elsewhere (GPU, TPU): ``CHUNK`` inputs per step, as each step is a launch."""
    order = jnp.argsort(input_times).astype(jnp.int32)
    return _causal_prefix_chunked(solver, input_times[order], order, weights, tau_m, tau_s, theta_c, CHUNK)


def _search_pallas(solver, input_times, weights, tau_m, tau_s, theta_c, *, interpret: bool = False):
    """The causal prefix from the Pallas kernel (`fsnn.core.prefix_kernel`; ``interpret`` for tests)."""
    from fsnn.core.prefix_kernel import causal_prefix_kernel

    order = jnp.argsort(input_times).astype(jnp.int32)
    return causal_prefix_kernel(solver, input_times[order], order, weights, tau_m, tau_s, theta_c, interpret=interpret)


def kernel_on_cuda(dtype) -> bool:
    """Whether CUDA GPUs run the Pallas kernel for layers of ``dtype`` (else `_search_chunked`)."""
    return PALLAS and jnp.dtype(dtype) == jnp.float32


def _search_cuda(solver, input_times, weights, tau_m, tau_s, theta_c):
    """The causal prefix on CUDA GPUs: the Pallas kernel (`kernel_on_cuda`), else `_search_chunked`."""
    search = _search_pallas if kernel_on_cuda(weights.dtype) else _search_chunked
    return search(solver, input_times, weights, tau_m, tau_s, theta_c)


@functools.cache
def _accelerator_visible() -> bool:
    """Whether JAX sees a device other than the CPU (then `_forward` compiles per platform)."""
    return any(device.platform != "cpu" for device in jax.devices())


# Each solver returns the crossing x in [0, peak] (peak in the solver's variable, see `_peak`).


def _solve_lambertw(b, d, x_hi, tau_m, tau_s, theta_c):
    tau = tau_s
    bt = b * tau
    log_minus_z = jnp.log(theta_c / bt) - d / bt
    z = -jnp.exp(jnp.minimum(log_minus_z, -1.0))  # >= -1/e: a crossing exists on this prefix
    return jnp.clip(-d / b - tau * lambertw(z), 0.0, x_hi)


def _solve_quadratic(b, d, q_peak, tau_m, tau_s, theta_c):
    a1 = tau_m * b
    a2 = d + a1
    disc = jnp.maximum(a2 * a2 - 4.0 * a1 * theta_c, 0.0)
    den = a2 + jnp.sqrt(disc)
    q = jnp.clip(jnp.where(den > 0, den, 0.0) / (2.0 * a1), q_peak, 1.0)  # larger root = earlier
    return -tau_m * jnp.log(q)


def _solve_root(b, d, x_hi, tau_m, tau_s, theta_c):
    # Any ratio tau_m / tau_s. Start: the closed form of the nearest lambertw model (one time
    # constant, the harmonic mean of the two; D's faster or slower decay folded into B to first
    # order in x delta), off by O((x delta)^2). Then steps that solve the second-order Taylor model
    # of U at the current point (U'' costs no extra exp), which stay fast where U is flat at the
    # crossing (near its peak), inside a bracket [lo, hi] that every evaluation narrows; a step
    # leaving it bisects instead. Stops once no neuron's step moves more than a few ulp, its
    # membrane is at threshold to rounding or its bracket has closed: 2-3 evaluations on trained
    # Yin-Yang layers (learned tau_m / tau_s from 0.8 to 1.3), where Newton from the left with a
    # bisection per step needed 7-9 of each. At most 24 (float32) or 40 (float64) steps. Never
    # differentiated (the custom JVP supplies the derivatives), so the early exit costs no
    # reverse-mode support.
    dtype = b.dtype
    max_steps = 40 if dtype == jnp.float64 else 24
    eps = jnp.finfo(dtype).eps
    tol = 4 * eps * x_hi
    flat = 4 * eps * theta_c
    inv_m, inv_s = 1.0 / tau_m, 1.0 / tau_s
    tau_bar = 2.0 / (inv_m + inv_s)
    b_bar = b + 0.5 * (inv_s - inv_m) * d  # e^{-x/tau_m} = e^{-x/tau_bar} (1 + x delta / 2 + ...)
    guess = _solve_lambertw(jnp.where(b_bar > 0, b_bar, b), d, x_hi, tau_bar, tau_bar, theta_c)  # in [0, x_hi]
    guess = jnp.where(jnp.isfinite(guess), guess, 0.0)  # or nan: start at 0

    def body(state):
        step, x, lo, hi, _ = state
        u, du = _scaled_u(x, b, d, tau_m, tau_s)
        ddu = -b * jnp.exp(-x / tau_s) / tau_s - du / tau_m
        f = _unfused(u - theta_c)  # one value for the side and the step (XLA may fuse it twice, rounding apart)
        above = f >= 0
        lo, hi = jnp.where(above, lo, x), jnp.where(above, x, hi)
        # The root of f + du h + ddu h^2 / 2 nearest h = 0, in the form without cancellation.
        disc = du * du - 2.0 * ddu * f
        den = du + jnp.sqrt(jnp.maximum(disc, 0.0))
        ok = (disc >= 0) & (den > 0)
        new = x - 2.0 * f / jnp.where(ok, den, 1.0)
        done = (jnp.abs(f) <= flat) | (hi - lo <= tol)  # at threshold to rounding, or bracketed
        new = jnp.where(ok & (new >= lo) & (new <= hi), new, jnp.where(done, x, 0.5 * (lo + hi)))
        return step + 1, new, lo, hi, jnp.any(~done & (jnp.abs(new - x) > tol))

    def cond(state):
        step, *_, moving = state
        return (step < max_steps) & moving

    start = (jnp.int32(0), guess, jnp.zeros_like(x_hi), x_hi, jnp.bool_(True))
    _, x, *_ = jax.lax.while_loop(cond, body, start)
    return jnp.clip(x, 0.0, x_hi)


_SOLVE = {"lambertw": _solve_lambertw, "quadratic": _solve_quadratic, "root": _solve_root}


def _forward(solver: str, input_times, weights, params: LIFParams):
    """Spike times without gradients (the custom JVP supplies them)."""
    if solver == "lambertw":  # the closed forms assume their ratio exactly
        params = params._replace(tau_m=params.tau_s)
    elif solver == "quadratic":
        params = params._replace(tau_m=2.0 * params.tau_s)
    theta_c = params.capacitance * (params.threshold - params.e_leak)
    searches = {"cpu": _search_cpu, "cuda": _search_cuda, "default": _search_chunked}
    if not _accelerator_visible():  # every branch would be traced: ≈ 0.4 s per layer for nothing
        searches = {"default": _search_cpu}  # portable JAX, right on any platform

    def branch(search):
        return lambda t, w: search(solver, t, w, params.tau_m, params.tau_s, theta_c)

    branches = {name: branch(search) for name, search in searches.items()}
    fired, t_k, b, d, peak = jax.lax.platform_dependent(input_times, weights, **branches)
    # Neurons without a spike get harmless stand-ins (double-where: no nan anywhere).
    b = jnp.where(fired, b, 1.0)
    d = jnp.where(fired, d, 0.0)
    peak = jnp.where(fired, peak, 1.0 if solver == "quadratic" else 0.0)  # x = 0 (q = 1): nothing to solve
    x = _SOLVE[solver](b, d, peak, params.tau_m, params.tau_s, theta_c)
    return jnp.where(fired, t_k + x, jnp.inf)


def layer_membrane(
    t: Float[ArrayLike, " n_out"],
    input_times: Float[ArrayLike, " n_in"],
    weights: Float[ArrayLike, "n_in n_out"],
    params: LIFParams = LIFParams(),
) -> Float[Array, " n_out"]:
    """Membrane potential of each neuron ``j`` of a layer at its own time ``t[j]`` (conventions of
    `layer_spike_times`).

    Example:
        >>> x, w = jnp.array([0.0, 0.5]), jnp.full((2, 3), 2.0)
        >>> [round(v, 6) for v in layer_membrane(layer_spike_times(x, w), x, w).tolist()]  # at threshold
        [1.0, 1.0, 1.0]
    """
    _, input_times, weights, params = _checked(input_times, weights, params, "root")
    t = jnp.asarray(t, weights.dtype)
    if t.shape != weights.shape[1:]:
        raise ValueError(f"`t` must have shape [n_out] = [{weights.shape[1]}] (one time per neuron); got {t.shape}.")
    return _layer_membrane(t, input_times, weights, params)


def _layer_membrane(t: Array, input_times: Array, weights: Array, params: LIFParams) -> Array:
    """`layer_membrane` of checked arrays."""
    s = t[None, :] - input_times[:, None]
    psp = weights * psp_kernel(s, _row(params.tau_m), _row(params.tau_s))
    return params.e_leak + jnp.sum(psp, axis=0) / params.capacitance


def _unfused(x: Array) -> Array:
    """``x`` unchanged, computed once: XLA does not fuse it into its consumers.

    XLA counts the multiplies and selects of a closed-form solve as cheap and fuses them into every
    ``[n_in, n_out]`` consumer, redoing the solve per input (784 times per neuron for MNIST;
    measured ≈ 0.1 s per 784–350 training step on CPU). A reduction cannot be fused into a
    consumer; this one (``max(x, -inf) = x``) is exact and the simplifier keeps it.
    """
    lowest = -jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
    return jnp.max(jnp.stack([x, jnp.full_like(x, lowest)]), axis=0)


def _split_exp(x: Array) -> tuple[Array, Array]:
    """``exp(x) = m 2^n`` with ``m`` in ``[2^-1/2, 2^1/2]`` and integer ``n``; never overflows.

    ``|x|`` is clipped at 1e6 so that ``n`` fits the integer type (a float32 time that large
    resolves only ≈ 0.06 time constants anyway).
    """
    x = jnp.clip(x, -1e6, 1e6)
    n = jnp.round(x * np.log2(np.e).astype(x.dtype))
    mantissa = jnp.exp(x - n * np.log(2.0).astype(x.dtype))
    return _unfused(mantissa), _unfused(n.astype(jnp.int64 if x.dtype == jnp.float64 else jnp.int32))


def _pair_exp(x_out: Float[Array, " n_out"], x_in: Float[Array, " n_in"]) -> Float[Array, "n_in n_out"]:
    """``exp(x_out[j] + x_in[i])`` from one ``exp`` per input and per neuron, not per pair.

    The exponents are split into mantissa and power of two (`_split_exp`) so that neither factor
    overflows, whatever the times; per pair only a product and an exponent add remain. Results
    below the smallest normal float come out as that float's order of magnitude (≤ 1e-37), where
    the direct ``exp`` would give 0 or a subnormal.
    """
    m_out, n_out = _split_exp(x_out)
    m_in, n_in = _split_exp(x_in)
    info = jnp.finfo(x_out.dtype)
    mantissa_bits = info.nmant
    bias = info.maxexp - 1
    n = jnp.clip(n_in[:, None] + n_out[None, :], 1 - bias, bias)
    two_n = jax.lax.bitcast_convert_type((n + bias) << mantissa_bits, x_out.dtype)
    return m_in[:, None] * m_out[None, :] * two_n


def _kernels(solver: str, t_out, input_times, tau_m, tau_s):
    """``kappa(s)`` and ``kappa'(s) = e^{-s/tau_s} - kappa/tau_m`` for ``s = t_out[j] - input_times[i]``.

    Zero unless ``0 < s < inf``. For the closed-form solvers with one time constant for the layer,
    the exponential factorises, ``e^{-s/tau} = e^{-t_out/tau} e^{input/tau}``: one ``exp`` per
    input and per neuron (`_pair_exp`), not per pair. Per-neuron time constants and the ``root``
    solver (any ratio) use the stable form of `psp_kernel`, one ``exp`` per pair.
    """
    s = t_out[None, :] - input_times[:, None]
    live = (s > 0) & jnp.isfinite(s)
    s = jnp.where(live, s, 0.0)
    if solver == "root":
        e_s = jnp.exp(-s / tau_s)
        kappa = psp_kernel(s, tau_m, tau_s)
    else:
        tau = tau_s if solver == "lambertw" else 2.0 * tau_s  # that of the kernel's exponential
        if jnp.ndim(tau) == 0:
            finite_in = jnp.where(jnp.isfinite(input_times), input_times, 0.0)
            # Masked here, not only at the end: for non-causal pairs the product may overflow.
            e = jnp.where(live, _pair_exp(-t_out / tau, finite_in / tau), 0.0)
        else:
            e = jnp.exp(-s / tau)
        if solver == "lambertw":
            e_s, tau_m = e, tau_s
            kappa = s * e_s
        else:  # quadratic: kappa = tau_m e_m (1 - e_m), e_m = e^{-s / tau_m}, e_s = e_m^2
            e_s, tau_m = e * e, tau
            kappa = tau_m * (e - e_s)
    return jnp.where(live, kappa, 0.0), jnp.where(live, e_s - kappa / tau_m, 0.0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _spike_times(solver: str, input_times, weights, params):
    return _forward(solver, input_times, weights, params)


def _spike_time_tangent(solver, t_out, primals, tangents, min_slope=None):
    """Implicit-function theorem at the spike: ``dT = -(dV - d theta) / V'(T)``.

    ``dV`` and the slope ``V'(T)`` are sums over ``[n_in, n_out]`` kernel entries; tangents that
    are symbolically zero (inputs or parameters not being differentiated) cost nothing. The
    kernels under the tangents are recomputed in reverse mode (`jax.checkpoint`; cheap, see
    `_kernels`), so the backward pass stores only the times, weights and slopes: O(n_in + n_out)
    per sample beyond the weights. The slope is floored at ``min_slope (theta - E_l) / tau_s``
    (default ``min_slope = sqrt(eps)``).
    """
    input_times, weights, params = primals
    d_times, d_weights, d_params = tangents
    fired = jnp.isfinite(t_out)
    t_safe = _unfused(jnp.where(fired, t_out, 0.0))
    tau_m, tau_s = _row(params.tau_m), _row(params.tau_s)
    kernels = functools.partial(_kernels, solver)
    capacitance = params.capacitance
    slope = jnp.sum(weights * kernels(t_safe, input_times, tau_m, tau_s)[1], axis=0) / capacitance

    def nonzero(t):
        return not isinstance(t, SymbolicZero)

    @jax.checkpoint
    def dv_weights(d_weights, t_safe, input_times, tau_m, tau_s):
        return jnp.sum(d_weights * kernels(t_safe, input_times, tau_m, tau_s)[0], axis=0)

    @jax.checkpoint
    def dv_times(d_times, t_safe, input_times, weights, tau_m, tau_s):
        w_dkappa = weights * kernels(t_safe, input_times, tau_m, tau_s)[1]
        return jnp.sum(d_times[:, None] * w_dkappa, axis=0)

    dv = jnp.zeros_like(t_out)
    if nonzero(d_weights):
        dv = dv + dv_weights(d_weights, t_safe, input_times, tau_m, tau_s) / capacitance
    if nonzero(d_times):
        finite = jnp.isfinite(input_times)  # a silent input does not move
        d_times = jnp.where(finite, d_times, 0.0)
        dv = dv - dv_times(d_times, t_safe, input_times, weights, tau_m, tau_s) / capacitance
    moving = [k for k, t in zip(LIFParams._fields, d_params) if nonzero(t)]
    if moving:

        def potential(*values):
            return _layer_membrane(t_safe, input_times, weights, params._replace(**dict(zip(moving, values))))

        _, dv_params = jax.jvp(
            potential, tuple(getattr(params, k) for k in moving), tuple(getattr(d_params, k) for k in moving)
        )
        dv = dv + dv_params
        if "threshold" in moving:
            dv = dv - d_params.threshold
    floor = _slope_floor(params, t_out.dtype, min_slope)
    dt = -dv / jnp.maximum(slope, floor)
    return jnp.where(fired, dt, 0.0)


def _slope_floor(params: LIFParams, dtype, min_slope: float | None = None) -> Array:
    """The floor of the membrane slope in the implicit-function theorem: ``min_slope (theta - E_l) / tau_s``
    (default ``min_slope = sqrt(eps)`` of ``dtype``)."""
    if min_slope is None:
        min_slope = np.sqrt(np.finfo(dtype).eps)
    return min_slope * (params.threshold - params.e_leak) / params.tau_s


def _spike_times_jvp(solver, primals, tangents):
    t_out = _spike_times(solver, *primals)
    return t_out, _spike_time_tangent(solver, t_out, primals, tangents)


_spike_times.defjvp(_spike_times_jvp, symbolic_zeros=True)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _observed_spike_times(solver: str, min_slope: float | None, observed, input_times, weights, params):
    return observed


def _observed_spike_times_jvp(solver, min_slope, primals, tangents):
    observed, *rest = primals
    return observed, _spike_time_tangent(solver, observed, tuple(rest), tuple(tangents[1:]), min_slope)


_observed_spike_times.defjvp(_observed_spike_times_jvp, symbolic_zeros=True)


def layer_spike_times(
    input_times: Float[ArrayLike, " n_in"],
    weights: Float[ArrayLike, "n_in n_out"],
    params: LIFParams = LIFParams(),
    *,
    solver: Solver = "auto",
) -> Float[Array, " n_out"]:
    r"""First spike time of every neuron of a layer, for one sample.

    Args:
        input_times: presynaptic spike times ``[n_in]``; ``inf`` = silent, ``nan`` treated as silent.
        weights: ``[n_in, n_out]``.
        params: `LIFParams` whose fields are scalars or ``[n_out]`` arrays (per neuron).
        solver: ``"lambertw"`` (tau_m = tau_s), ``"quadratic"`` (tau_m = 2 tau_s), ``"root"`` (any
            ratio) or ``"auto"`` (picks from concrete parameters; raises if they are traced).
            Static: it selects code, not values.

    Returns:
        ``[n_out]`` spike times, ``inf`` where a neuron does not fire. Differentiable (exact
        gradients, implicit-function theorem) in ``input_times``, ``weights`` and every field of
        ``params``. For the closed-form solvers the spike time is computed with ``tau_m`` set to
        ``tau_s`` (``lambertw``) or ``2 tau_s`` (``quadratic``), while gradients are those of the
        general model at that point, including ``dT/dtau_m``. Batches: ``jax.vmap`` over
        ``input_times``.

    Example:
        >>> t = layer_spike_times(jnp.array([0.0, 0.5]), jnp.full((2, 3), 2.0))
        >>> t.shape
        (3,)
    """
    solver, input_times, weights, params = _checked(input_times, weights, params, solver)
    if input_times.shape[0] == 0:
        return jnp.full((weights.shape[1],), jnp.inf, weights.dtype)
    return _spike_times(solver, input_times, weights, params)


def spike_times_at(
    observed: Float[ArrayLike, " n_out"],
    input_times: Float[ArrayLike, " n_in"],
    weights: Float[ArrayLike, "n_in n_out"],
    params: LIFParams = LIFParams(),
    *,
    solver: Solver = "auto",
    min_slope: float | None = None,
) -> Float[Array, " n_out"]:
    r"""Spike times ``observed`` elsewhere, with the layer's exact gradients evaluated at them.

    The value is ``observed`` (e.g. spike times measured on an analog substrate, `fsnn.substrate`);
    the derivative is the implicit-function-theorem derivative of `layer_spike_times` with the
    membrane of the *model* (``input_times``, ``weights``, ``params``) evaluated at ``observed``
    instead of at the model's own spike times: how Göltz et al. (2021) trained in the loop on
    BrainScaleS-2. Where ``observed`` equals the model's spike times, value and gradients equal
    `layer_spike_times`. ``inf`` (silent) entries get zero gradient; ``observed`` itself gets none.

    ``min_slope`` floors the model's membrane slope ``V'`` at ``observed`` in the denominator, in
    units of ``(theta - E_l) / tau_s`` (default ``sqrt(eps)``, as `layer_spike_times`). An observed
    time the model's membrane does not explain (e.g. jittered past its peak, where ``V'`` is tiny or
    negative) then moves with at most ``1 / min_slope`` times the membrane change instead of blowing
    up; a static float.

    Example:
        >>> x, w = jnp.array([0.0, 0.5]), jnp.full((2, 3), 2.0)
        >>> bool(jnp.allclose(spike_times_at(layer_spike_times(x, w), x, w), layer_spike_times(x, w)))
        True
    """
    solver, input_times, weights, params = _checked(input_times, weights, params, solver)
    observed = jax.lax.stop_gradient(jnp.asarray(observed, weights.dtype))
    if observed.shape != (weights.shape[1],):
        raise ValueError(f"`observed` must have shape [n_out] = [{weights.shape[1]}]; got {observed.shape}.")
    if min_slope is not None and not min_slope > 0:
        raise ValueError(f"`min_slope` must be > 0 or None; got {min_slope}.")
    if input_times.shape[0] == 0:
        return observed
    return _observed_spike_times(solver, min_slope, observed, input_times, weights, params)


def _checked(input_times, weights, params: LIFParams, solver: Solver):
    """Validated ``(solver, input_times, weights, params)`` in one floating dtype (nan inputs -> inf)."""
    params = checked_params(params)
    input_times = jnp.asarray(input_times)
    weights = jnp.asarray(weights)
    if input_times.ndim != 1:
        raise ValueError(
            f"`input_times` must have shape [n_in] (one sample); got {input_times.shape}. "
            "Use jax.vmap over the batch axis."
        )
    if weights.ndim != 2 or weights.shape[0] != input_times.shape[0]:
        raise ValueError(
            f"`weights` must have shape [n_in, n_out] = [{input_times.shape[0]}, n_out]; got {weights.shape}."
        )
    dtype = jnp.result_type(input_times, weights)
    if dtype not in (jnp.float32, jnp.float64):  # half precision: exp factors overflow, ranks too coarse
        raise ValueError(
            f"`input_times` and `weights` must be float32 or float64; got {dtype}. Compute in float32 "
            "(`.astype(jnp.float32)`) and cast the spike times afterwards if needed."
        )
    n_out = weights.shape[1]
    for name, value in zip(LIFParams._fields, params):
        shape = np.shape(value)
        if shape not in ((), (n_out,)):
            raise ValueError(f"`params.{name}` must be a scalar or have shape [n_out] = [{n_out}]; got {shape}.")
    solver = resolve_solver(params, solver)
    params = params.astype(dtype)
    input_times = jnp.where(jnp.isnan(input_times), jnp.inf, input_times.astype(dtype))
    return solver, input_times, weights.astype(dtype), params


def first_spike_time(
    input_times: Float[ArrayLike, " n_in"],
    weights: Float[ArrayLike, " n_in"],
    params: LIFParams = LIFParams(),
    *,
    solver: Solver = "auto",
) -> Float[Array, ""]:
    """First spike time of one neuron for one sample (``inf`` if it stays below threshold).

    Same conventions as `layer_spike_times`; ``params`` fields are scalars.

    Example:
        >>> float(first_spike_time(jnp.array([0.0]), jnp.array([2 * jnp.e])))  # doctest: +ELLIPSIS
        0.2...
    """
    weights = jnp.asarray(weights)
    if weights.ndim != 1:
        raise ValueError(f"`weights` must have shape [n_in] for one neuron; got {weights.shape}.")
    return layer_spike_times(input_times, weights[:, None], params, solver=solver)[0]
