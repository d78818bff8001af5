"""fsnn.core.spike_time: exactness against the event-driven oracle, exact gradients, hard cases."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from jax.test_util import check_grads

from fsnn import (
    LIFParams,
    batch_spike_times,
    first_spike_time,
    layer_membrane,
    layer_spike_times,
    membrane_potential,
    simulate_neuron,
)

PAPER = LIFParams()  # tau_m = tau_s = 1, g_l = 1, E_l = 0, theta = 1
DOUBLE = LIFParams(tau_m=2.0, g_leak=0.5)  # tau_m = 2 tau_s, C = 1 (the paper's second setting)
ODD = LIFParams(tau_m=1.7, tau_s=0.8, threshold=1.2, g_leak=0.7, e_leak=0.1)
FAST_MEMBRANE = LIFParams(tau_m=0.6, tau_s=1.0, threshold=0.8, g_leak=1.3, e_leak=-0.2)
# Far from the closed forms' ratios, where the root solver's start (the nearest lambertw model) is poor.
SLOW_MEMBRANE = LIFParams(tau_m=8.0, tau_s=0.5, g_leak=0.125)  # tau_m = 16 tau_s
FASTER_MEMBRANE = LIFParams(tau_m=0.2, tau_s=1.0, threshold=0.5, g_leak=5.0)  # tau_m = tau_s / 5
N_MAX = 300


def random_cases(seed: int, count: int, n_max: int = N_MAX):
    """Random neurons padded to ``n_max`` inputs with silent (``inf``) entries."""
    rng = np.random.default_rng(seed)
    times = np.full((count, n_max), np.inf)
    weights = np.zeros((count, n_max))
    for c in range(count):
        n = int(rng.integers(1, n_max + 1)) if rng.random() < 0.5 else int(rng.integers(1, 12))
        t = rng.uniform(0.0, 3.0, n)
        kind = rng.random()
        if kind < 0.1:
            t[:] = t[0]  # all simultaneous
        elif kind < 0.25:
            t = np.round(t, 1)  # many ties
        if rng.random() < 0.2:
            t[rng.random(n) < 0.3] = np.inf  # some silent inputs
        w = rng.normal(0.5, 1.0, n) * rng.uniform(0.5, 4.0) / np.sqrt(n)
        times[c, :n], weights[c, :n] = t, w
    return times, weights


@functools.cache
def oracle(params: LIFParams, seed: int, count: int):
    times, weights = random_cases(seed, count)
    ref = np.array([simulate_neuron(t, w, params).spike_time for t, w in zip(times, weights)])
    return times, weights, ref


@pytest.mark.parametrize(
    ("params", "solver"),
    [
        (PAPER, "lambertw"),
        (PAPER, "root"),
        (DOUBLE, "quadratic"),
        (DOUBLE, "root"),
        (ODD, "root"),
        (FAST_MEMBRANE, "root"),
        (SLOW_MEMBRANE, "root"),
        (FASTER_MEMBRANE, "root"),
    ],
)
def test_spike_times_match_event_oracle(params, solver):
    times, weights, ref = oracle(params, 0, 1500)
    fn = jax.jit(jax.vmap(lambda t, w: first_spike_time(t, w, params, solver=solver)))
    got = np.asarray(fn(jnp.asarray(times), jnp.asarray(weights)))
    fired = np.isfinite(ref)
    assert 0.2 < fired.mean() < 0.9, "the random cases should mix firing and silent neurons"
    np.testing.assert_array_equal(np.isfinite(got), fired)
    np.testing.assert_allclose(got[fired], ref[fired], rtol=0, atol=1e-9)


@pytest.mark.parametrize("params", [PAPER, DOUBLE, ODD])
def test_layer_equals_neurons_and_membrane_hits_threshold(params):
    times, weights, _ = oracle(params, 0, 1500)
    t = jnp.asarray(times[5, :40])  # one sample, 64 neurons
    w = jnp.asarray(weights[:64, :40].T) * 3.0
    layer = layer_spike_times(t, w, params)
    single = jax.jit(jax.vmap(lambda wj: first_spike_time(t, wj, params), in_axes=1))(w)
    np.testing.assert_allclose(layer, single, rtol=1e-14)
    fired = jnp.isfinite(layer)
    assert 0 < int(fired.sum()) < w.shape[1]
    v = jax.vmap(lambda tt, ww: membrane_potential(tt, t, ww, params), in_axes=(0, 1))(jnp.where(fired, layer, 0.0), w)
    np.testing.assert_allclose(np.asarray(v)[np.asarray(fired)], params.threshold, atol=1e-12)
    at_layer = layer_membrane(jnp.where(fired, layer, 0.0), t, w, params)  # the layer's own membrane
    np.testing.assert_allclose(at_layer, v, rtol=1e-12)


def test_layer_membrane_takes_what_layer_spike_times_takes():
    """With the default (Python float) parameters it failed in `_row` ('float' has no `ndim`)."""
    x, w = [0.0, 0.5], np.full((2, 3), 2.0)
    t = layer_spike_times(jnp.asarray(x), jnp.asarray(w))
    np.testing.assert_allclose(layer_membrane(t, x, w), 1.0, rtol=1e-5)  # lists, NumPy, default params
    with pytest.raises(ValueError, match=r"`t` must have shape \[n_out\] = \[3\] .*; got \(2,\)"):
        layer_membrane(t[:2], x, w)
    with pytest.raises(ValueError, match=r"`weights` must have shape \[n_in, n_out\]"):
        layer_membrane(t, x, w[:1])


def test_per_neuron_parameters():
    rng = np.random.default_rng(3)
    t = jnp.asarray(rng.uniform(0, 2, 10))
    w = jnp.asarray(rng.normal(0.8, 1.0, (10, 5)))
    tau_m = jnp.array([0.5, 1.0, 1.5, 2.0, 3.0])
    params = LIFParams(tau_m=tau_m, threshold=jnp.array([0.5, 1.0, 1.0, 0.7, 0.6]))
    out = jax.jit(functools.partial(layer_spike_times, solver="root"))(t, w, params)
    for j in range(5):
        pj = LIFParams(tau_m=tau_m[j], threshold=params.threshold[j])
        ref = simulate_neuron(np.asarray(t), np.asarray(w[:, j]), pj).spike_time
        assert np.isfinite(ref) == bool(jnp.isfinite(out[j]))
        if np.isfinite(ref):
            assert abs(float(out[j]) - ref) < 1e-9


# ----------------------------------------------------------------------------- gradients


def _grad_cases(seed, count=24, n=16):
    """Firing neurons whose causal set is stable under small perturbations (|T - t_i| > 1e-3),
    padded to ``n`` inputs with silent ones (whose exact gradient is zero)."""
    rng = np.random.default_rng(seed)
    times, weights = np.full((count, n), np.inf), np.zeros((count, n))
    c = 0
    while c < count:
        k = int(rng.integers(1, n + 1))
        t = rng.uniform(0, 3, k)
        w = rng.normal(0.6, 1.2, k) * 2.0 / np.sqrt(k)
        spikes = [simulate_neuron(t, w, p).spike_time for p in (PAPER, DOUBLE, ODD)]
        if all(np.isfinite(s) and np.min(np.abs(t - s)) > 1e-3 for s in spikes):
            times[c, :k], weights[c, :k] = t, w
            c += 1
    return jnp.asarray(times), jnp.asarray(weights)


def _central_differences(fn, args, h=1e-6):
    """Central differences of scalar ``fn(*args)`` for every scalar entry of every argument."""
    flat, unravel = ravel_pytree(args)
    eye = jnp.eye(flat.size, dtype=flat.dtype) * h
    evaluate = jax.vmap(lambda x: fn(*unravel(x)))
    return (evaluate(flat[None, :] + eye) - evaluate(flat[None, :] - eye)) / (2 * h)


@pytest.mark.parametrize(
    ("params", "solver"), [(PAPER, "lambertw"), (DOUBLE, "quadratic"), (ODD, "root"), (PAPER, "root")]
)
def test_gradients_match_finite_differences(params, solver):
    # Closed forms hold their ratio fixed, so their tau_m derivative is compared with the general
    # (root-solver) model, of which the closed form is the tau_m = tau_s (or 2 tau_s) slice.
    params = params.astype(jnp.float64)

    def spike(t, w, p):
        return first_spike_time(t, w, p, solver=solver)

    def spike_general(t, w, p):
        return first_spike_time(t, w, p, solver="root")

    @jax.jit
    @functools.partial(jax.vmap, in_axes=(0, 0, None))
    def both(t, w, p):
        grads = ravel_pytree(jax.grad(spike, argnums=(0, 1, 2))(t, w, p))[0]
        return grads, _central_differences(spike_general, (t, w, p))

    times, weights = _grad_cases(1)
    grads, fd = both(times, weights, params)
    assert bool(jnp.all(jnp.isfinite(grads)))
    np.testing.assert_allclose(grads, fd, rtol=1e-6, atol=1e-8)
    assert float(jnp.abs(grads).max()) > 0.1  # non-trivial


def test_gradients_vmap_grad_equals_grad_vmap():
    t, w = _grad_cases(2, count=8, n=10)
    params = ODD.astype(jnp.float64)

    def spike(t, w, p):
        return first_spike_time(t, w, p, solver="root")

    per_sample = jax.jit(jax.vmap(jax.grad(spike, argnums=(0, 1, 2)), in_axes=(0, 0, None)))(t, w, params)
    summed = jax.jit(
        jax.grad(lambda t, w, p: jnp.sum(jax.vmap(spike, in_axes=(0, 0, None))(t, w, p)), argnums=(0, 1, 2))
    )(t, w, params)
    np.testing.assert_allclose(per_sample[0], summed[0], rtol=1e-13)
    np.testing.assert_allclose(per_sample[1], summed[1], rtol=1e-13)
    for a, b in zip(per_sample[2], summed[2]):
        np.testing.assert_allclose(jnp.sum(a), b, rtol=1e-12)
    # Padding with silent inputs gets exactly zero gradient.
    silent = ~jnp.isfinite(t)
    assert bool(silent.any())
    assert float(jnp.abs(jnp.where(silent, per_sample[0], 0.0)).max()) == 0.0


@pytest.mark.parametrize(("params", "solver"), [(PAPER, "lambertw"), (DOUBLE, "quadratic"), (ODD, "root")])
def test_check_grads_layer(params, solver):
    rng = np.random.default_rng(4)
    t = jnp.asarray(rng.uniform(0, 2, 6))
    w = jnp.asarray(rng.normal(1.2, 0.6, (6, 4)))
    p = params.astype(jnp.float64)
    assert bool(jnp.all(jnp.isfinite(layer_spike_times(t, w, p, solver=solver))))
    fn = jax.jit(functools.partial(layer_spike_times, params=p, solver=solver))
    check_grads(fn, (t, w), order=1, modes=("fwd", "rev"), eps=1e-6)


def test_implicit_function_identity():
    """dT/dθ = -(∂V/∂θ)/(∂V/∂t) at T, with ∂V from jax.grad of the public membrane function."""
    params = ODD.astype(jnp.float64)

    @jax.jit
    @functools.partial(jax.vmap, in_axes=(0, 0, None))
    def both(t, w, p):
        spike = first_spike_time(t, w, p, solver="root")
        dv = jax.grad(membrane_potential, argnums=(0, 1, 2, 3))(spike, t, w, p)
        return jax.grad(first_spike_time, argnums=(0, 1, 2))(t, w, p, solver="root"), dv

    (g_t, g_w, g_p), (dv_dt, dv_dti, dv_dw, dv_dp) = both(*_grad_cases(5, count=10), params)
    np.testing.assert_allclose(g_w, -dv_dw / dv_dt[:, None], rtol=1e-10)
    np.testing.assert_allclose(g_t, -dv_dti / dv_dt[:, None], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(g_p.tau_m, -dv_dp.tau_m / dv_dt, rtol=1e-10)
    np.testing.assert_allclose(g_p.tau_s, -dv_dp.tau_s / dv_dt, rtol=1e-10)
    np.testing.assert_allclose(g_p.threshold, 1.0 / dv_dt, rtol=1e-10)


# ----------------------------------------------------------------------------- robustness

W_TOUCH = float(np.e)  # one input at 0: the PSP maximum (w/e at t = 1) touches threshold exactly

HARD_CASES = {
    "all inputs silent": (np.full(3, np.inf), np.ones(3)),
    "all weights negative": (np.array([0.1, 0.5, 0.9]), -np.ones(3)),
    "inputs all at the same time": (np.full(4, 0.7), np.full(4, 1.0)),
    "maximum touches threshold": (np.array([0.0]), np.array([W_TOUCH])),
    "maximum just above threshold": (np.array([0.0]), np.array([W_TOUCH * (1 + 1e-12)])),
    "huge weight": (np.array([0.0, 0.2]), np.array([1e6, 1.0])),
    "tiny weights": (np.array([0.0, 0.2]), np.array([1e-12, 1e-12])),
    "late inputs (1e3)": (np.array([1000.0, 1000.3, 1000.5]), np.array([1.5, 1.5, 1.5])),
    "early and very late inputs": (np.array([0.0, 1000.0]), np.array([0.5, 6.0])),
    "nan input time": (np.array([0.1, np.nan, 0.3]), np.array([2.0, 5.0, 2.0])),
    "exactly one silent, rest cancel": (np.array([0.2, 0.2, np.inf]), np.array([3.0, -3.0, 9.0])),
}


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize(
    ("params", "solver"), [(PAPER, "lambertw"), (DOUBLE, "quadratic"), (ODD, "root"), (PAPER, "root")]
)
def test_hard_cases_never_nan(params, solver, dtype):
    names = sorted(HARD_CASES)
    n = max(HARD_CASES[k][0].size for k in names)
    # Pad with silent inputs (exactly neutral) so all cases run in one compiled, vmapped call;
    # "no inputs" really has zero inputs and runs on its own.
    times = jnp.asarray(
        [np.pad(HARD_CASES[k][0], (0, n - HARD_CASES[k][0].size), constant_values=np.inf) for k in names], dtype
    )
    weights = jnp.asarray([np.pad(HARD_CASES[k][1], (0, n - HARD_CASES[k][1].size)) for k in names], dtype)
    p = params.astype(dtype)

    def spike(t, w, p):
        return first_spike_time(t, w, p, solver=solver)

    value_and_grad = jax.value_and_grad(spike, argnums=(0, 1, 2))
    values, grads = jax.jit(jax.vmap(value_and_grad, in_axes=(0, 0, None)))(times, weights, p)
    empty_value, empty_grads = jax.jit(value_and_grad)(jnp.zeros(0, dtype), jnp.zeros(0, dtype), p)
    assert float(empty_value) == np.inf and empty_value.dtype == dtype
    assert all(float(jnp.abs(g).max(initial=0.0)) == 0.0 for g in jax.tree.leaves(empty_grads))

    assert values.dtype == dtype
    for i, case in enumerate(names):
        value = values[i]
        case_grads = jax.tree.map(lambda g, i=i: g[i], grads)
        assert not bool(jnp.isnan(value)), case
        assert float(value) >= 0, case
        for g in jax.tree.leaves(case_grads):
            assert g.dtype == dtype
            assert bool(jnp.all(jnp.isfinite(g))), (case, case_grads)
        if case == "nan input time":
            clean = times[i].at[1].set(jnp.inf)
            np.testing.assert_array_equal(value, values[names.index("nan input time")])
            np.testing.assert_allclose(value, jax.jit(spike)(clean, weights[i], p), rtol=1e-6)
            assert float(case_grads[0][1]) == 0.0 and float(case_grads[1][1]) == 0.0
        if case in ("no inputs", "all inputs silent", "all weights negative", "tiny weights"):
            assert float(value) == np.inf, case
            assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(case_grads)), case
        if case == "huge weight":
            assert 0.0 < float(value) < 1e-5
        if case in ("late inputs (1e3)", "early and very late inputs"):  # shifted by 1000: same spike
            t_np, w_np = HARD_CASES[case]
            ref = simulate_neuron(t_np - 1000.0, w_np, params).spike_time + 1000.0
            assert np.isfinite(ref), case
            assert abs(float(value) - ref) < (1e-9 if dtype == jnp.float64 else 2e-3)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize(("params", "solver"), [(PAPER, "lambertw"), (DOUBLE, "quadratic"), (ODD, "root")])
def test_gradients_exact_for_times_far_apart(params, solver, dtype):
    """Inputs and spikes 0 to 600 time constants apart in one layer: the backward pass factorises
    e^{-(T - t)/tau} into per-input and per-neuron factors, which must neither overflow nor lose
    the pairs. Reference: the implicit-function identity with autodiff of the public membrane."""
    times = np.array([0.0, 0.3, 300.0, 300.2, 600.0, 600.4, np.inf])
    block = np.array([[3.0, 2.0], [1.5, 2.5]])  # two neurons per group of two inputs
    weights = np.zeros((7, 6))
    for g in range(3):
        weights[2 * g : 2 * g + 2, 2 * g : 2 * g + 2] = block
    weights[6] = 5.0  # silent input
    p = params.astype(dtype)
    t, w = jnp.asarray(times, dtype), jnp.asarray(weights, dtype)
    out, pullback = jax.vjp(lambda t, w: layer_spike_times(t, w, p, solver=solver), t, w)
    assert bool(jnp.all(jnp.isfinite(out)))
    assert float(out[0]) < 2 and float(out[-1]) > 600  # one layer spans 600 time constants
    # Row j: the gradient of neuron j's spike time with respect to the input times and weights.
    rows = jax.vmap(pullback)(jnp.eye(6, dtype=dtype))
    p64 = params.astype(jnp.float64)

    def identity(j):
        grads = jax.grad(membrane_potential, argnums=(0, 1, 2))(
            float(out[j]), jnp.asarray(times), jnp.asarray(weights[:, j]), p64
        )
        return -grads[1] / grads[0], -grads[2] / grads[0]

    tol = {"rtol": 1e-10, "atol": 1e-14} if dtype == jnp.float64 else {"rtol": 2e-3, "atol": 1e-6}
    for j in range(6):
        d_times, d_weights = identity(j)
        np.testing.assert_allclose(rows[1][j][:, j], d_weights, **tol)
        np.testing.assert_allclose(rows[0][j], jnp.where(jnp.isfinite(times), d_times, 0.0), **tol)
        assert float(jnp.abs(rows[1][j]).sum() - jnp.abs(rows[1][j][:, j]).sum()) == 0.0  # other columns
    assert float(jnp.abs(rows[1]).max()) > 0.1


def test_touching_threshold_is_defined():
    """At the Lambert W branch point the spike time is t = tau (or inf by rounding), never nan."""
    t = jnp.array([0.0])
    for w in (W_TOUCH, W_TOUCH * (1 + 1e-9)):
        for solver in ("lambertw", "root"):
            value = float(first_spike_time(t, jnp.array([w]), PAPER, solver=solver))
            assert value == np.inf or abs(value - 1.0) < 1e-4
    above = float(first_spike_time(t, jnp.array([W_TOUCH * (1 + 1e-9)]), PAPER))
    assert abs(above - 1.0) < 1e-4


@pytest.mark.parametrize(
    ("params", "solver"),
    [(PAPER, "lambertw"), (DOUBLE, "quadratic"), (ODD, "root"), (SLOW_MEMBRANE, "root"), (FASTER_MEMBRANE, "root")],
)
def test_float32_matches_float64(params, solver):
    times, weights, ref = (x[:500] for x in oracle(params, 0, 1500))
    keep = np.isfinite(ref)
    # "typical" cases: clearly firing (not grazing), not knife-edge.
    fn = jax.jit(jax.vmap(lambda t, w: first_spike_time(t, w, params, solver=solver)))
    t32 = fn(jnp.asarray(times, jnp.float32), jnp.asarray(weights, jnp.float32))
    t64 = fn(jnp.asarray(times), jnp.asarray(weights))
    assert t32.dtype == jnp.float32
    grid = jnp.linspace(0.0, 6.0, 600)
    peak = jax.jit(jax.vmap(lambda t, w: membrane_potential(grid, t, w, params.astype(jnp.float64)).max()))
    grazing = np.asarray(peak(jnp.asarray(times), jnp.asarray(weights))) < params.threshold + 1e-3
    typical = keep & ~grazing
    assert typical.sum() > 100
    np.testing.assert_allclose(np.asarray(t32, np.float64)[typical], np.asarray(t64)[typical], atol=1e-4)


# ----------------------------------------------------------------------------- errors and solver choice


def test_auto_solver_and_errors():
    t, w = jnp.array([0.0, 0.5]), jnp.array([2.0, 2.0])
    assert np.isclose(float(first_spike_time(t, w)), float(first_spike_time(t, w, solver="root")), atol=1e-12)
    with pytest.raises(ValueError, match="`solver='auto'` needs concrete"):
        jax.jit(lambda p: first_spike_time(t, w, p))(PAPER.astype(jnp.float64))
    # explicit solvers work under jit with traced parameters
    jax.jit(lambda p: first_spike_time(t, w, p, solver="root"))(ODD.astype(jnp.float64))
    with pytest.raises(ValueError, match="`solver`"):
        first_spike_time(t, w, solver="newton")
    with pytest.raises(ValueError, match="tau_m == tau_s"):
        first_spike_time(t, w, DOUBLE, solver="lambertw")
    with pytest.raises(ValueError, match="`params.tau_s` must be > 0"):
        first_spike_time(t, w, LIFParams(tau_s=-1.0))
    with pytest.raises(ValueError, match="`params.threshold` must exceed"):
        first_spike_time(t, w, LIFParams(threshold=-1.0))
    with pytest.raises(ValueError, match="`input_times` must have shape"):
        layer_spike_times(jnp.zeros((2, 2)), jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"`weights` must have shape \[n_in, n_out\]"):
        layer_spike_times(jnp.zeros(3), jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="`params.tau_m` must be a scalar or have shape"):
        layer_spike_times(jnp.zeros(2), jnp.zeros((2, 3)), LIFParams(tau_m=jnp.ones(4)))
    calls = (  # (an AttributeError from deep inside; simulate_neuron took a plain tuple as it stood)
        (first_spike_time, t, w),
        (layer_spike_times, t, w[:, None]),
        (membrane_potential, 1.0, t, w),
        (simulate_neuron, np.asarray(t), np.asarray(w)),
        (batch_spike_times, t[None], w[:, None]),
    )
    for params, fix in (({"tau_m": 2.0}, r"LIFParams\(\*\*params\)\); got dict"), ((1.0,) * 5, "e.g. .*; got tuple")):
        for function, *args in calls:
            with pytest.raises(TypeError, match=f"^`params` must be an fsnn.LIFParams \\({fix}"):
                function(*args, params)
    for dtype in (jnp.int32, jnp.float16, jnp.bfloat16):  # (half precision failed in a bit cast of the sort)
        with pytest.raises(ValueError, match=f"must be float32 or float64; got {jnp.dtype(dtype).name}"):
            first_spike_time(t.astype(dtype), w.astype(dtype))


def test_jit_vmap_grad_compose():
    rng = np.random.default_rng(7)
    t = jnp.asarray(rng.uniform(0, 2, (8, 5)))
    w = jnp.asarray(rng.normal(1.0, 0.8, (5, 3)))

    def loss(w):
        out = jax.vmap(layer_spike_times, in_axes=(0, None))(t, w)
        return jnp.sum(jnp.where(jnp.isfinite(out), out, 0.0))

    g_rev = jax.jit(jax.grad(loss))(w)
    g_fwd = jax.jit(jax.jacfwd(loss))(w)  # forward mode agrees with reverse mode
    np.testing.assert_allclose(g_fwd, g_rev, rtol=1e-12)
    assert float(jnp.abs(g_rev).max()) > 0.0


@pytest.mark.parametrize(("params", "solver"), [(PAPER, "lambertw"), (DOUBLE, "quadratic"), (ODD, "root")])
def test_sequential_and_parallel_prefix_search_agree(params, solver, monkeypatch):
    """Wide layers scan the inputs sequentially, narrow ones in parallel, GPUs in chunks, the native
    CPU kernel in one call: the same times.

    The GPU paths are routed in on CPU: the Pallas kernel in interpret mode, and the chunked
    search with chunks of one input, a non-divisor of n_in (padding) and more than n_in.

    Batched rows: random times with silent inputs; a large tie group at the last finite time (like
    an image's background at ``t_late``); ties in the middle; every input at one time; all silent.
    """
    from fsnn.core import spike_time

    rng = np.random.default_rng(11)
    random = np.where(rng.random(40) < 0.1, np.inf, rng.uniform(0, 3, 40))
    background = np.where(rng.random(40) < 0.6, 2.0, rng.uniform(0.1, 2.0, 40))
    background[:3] = np.inf
    middle_ties = np.where(rng.random(40) < 0.5, 1.0, rng.uniform(0, 3, 40))
    t = jnp.asarray(np.stack([random, background, middle_ties, np.full(40, 0.5), np.full(40, np.inf)]))
    w = jnp.asarray(rng.normal(0.05, 0.5, (40, 24)))
    scale = jnp.asarray(rng.uniform(0.8, 1.2, 24))
    per_neuron = params._replace(threshold=params.threshold * scale, g_leak=params.g_leak * scale)

    def run():
        fn = jax.vmap(functools.partial(layer_spike_times, solver=solver), (0, None, None))
        return jax.jit(fn)(t, w, per_neuron), jax.jit(jax.jacrev(lambda w: fn(t, w, per_neuron)))(w)

    others = [run()]  # the native CPU kernel
    monkeypatch.setattr(spike_time, "NATIVE", False)
    monkeypatch.setattr(spike_time, "PARALLEL_MAX_OUT", 0)
    sequential = run()
    monkeypatch.setattr(spike_time, "PARALLEL_MAX_OUT", 10**6)
    others.append(run())
    monkeypatch.setattr(spike_time, "_search_cpu", functools.partial(spike_time._search_pallas, interpret=True))
    others.append(run())
    monkeypatch.setattr(spike_time, "_search_cpu", spike_time._search_chunked)
    for chunk in (1, 7, 64):
        monkeypatch.setattr(spike_time, "CHUNK", chunk)
        others.append(run())
    fired = jnp.isfinite(sequential[0])
    assert all(0 < int(n) < 24 for n in fired[:4].sum(axis=1)) and not fired[4].any()
    for times, jacobian in others:
        np.testing.assert_array_equal(jnp.isfinite(times), fired)
        np.testing.assert_allclose(times, sequential[0], rtol=1e-13)
        np.testing.assert_allclose(jacobian, sequential[1], rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize(("params", "solver"), [(PAPER, "lambertw"), (DOUBLE, "quadratic"), (ODD, "root")])
def test_pallas_kernel_matches_the_walk_in_float32(params, solver):
    """The GPU kernel (interpret mode) finds the sequential walk's prefixes in float32, the dtype it runs in.

    Per-neuron thresholds (and membrane time constants for ``root``), sizes that are not powers of
    two (the kernel pads them), silent inputs.
    """
    from fsnn.core.prefix_kernel import causal_prefix_kernel
    from fsnn.core.spike_time import _causal_prefix

    rng = np.random.default_rng(5)
    t = jnp.asarray(np.where(rng.random((6, 37)) < 0.15, np.inf, rng.uniform(0, 3, (6, 37))), jnp.float32)
    w = jnp.asarray(rng.normal(0.1, 0.5, (37, 21)), jnp.float32)
    theta_c = jnp.asarray(rng.uniform(0.8, 1.2, 21), jnp.float32) * params.g_leak * params.tau_m
    theta_c = theta_c * (params.threshold - params.e_leak)
    tau_m = params.tau_s if solver == "lambertw" else params.tau_m
    if solver == "root":
        tau_m = tau_m * jnp.asarray(rng.uniform(0.8, 1.25, 21), jnp.float32)

    def both(ti):
        order = jnp.argsort(ti).astype(jnp.int32)
        args = (solver, ti[order], order, w, tau_m, params.tau_s, theta_c)
        return _causal_prefix(*args), causal_prefix_kernel(*args, interpret=True)

    walk, kernel = jax.jit(jax.vmap(both))(t)
    assert 10 < int(walk[0].sum()) < walk[0].size
    np.testing.assert_array_equal(kernel[0], walk[0])
    for a, b in zip(kernel[1:], walk[1:]):
        np.testing.assert_allclose(jnp.where(walk[0], a, 0.0), jnp.where(walk[0], b, 0.0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_integer_key_argsort_is_the_stable_argsort(dtype):
    """The CPU sort path equals NumPy's stable argsort, ties, signed zeros and inf included."""
    from fsnn.core.spike_time import _argsort, _argsort_by_int_keys

    rng = np.random.default_rng(0)
    pool = np.array([0.0, -0.0, 1.0, 2.5, np.inf, -1.0, 1e-30, -1e-30, 7.0])
    rows = [rng.choice(pool, size=40) for _ in range(20)] + [rng.normal(size=40) for _ in range(20)]
    x = np.stack(rows).astype(dtype)
    expected = np.argsort(x, axis=1, kind="stable")
    for fn in (_argsort, _argsort_by_int_keys):
        np.testing.assert_array_equal(jax.jit(jax.vmap(fn))(jnp.asarray(x)), expected)
