"""fsnn.substrate: the emulated analog substrate and in-the-loop training."""

import dataclasses
import importlib.util
import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fsnn import LIFParams, layer_spike_times, membrane_potential, simulate_neuron, spike_times_at
from fsnn import substrate as sub
from fsnn.nn import SpikingNetwork
from fsnn.train import Config, ConfigError, apply_overrides, load_config
from fsnn.train.config import EXPERIMENTS_DIR
from fsnn.train.loop import (
    Trainer,
    activity,
    activity_summary,
    evaluate_run,
    hyperparameters,
    load_data,
    restore_run,
    train_and_evaluate,
)
from fsnn.train.sweep import group_key, sweep

F64 = jnp.float64


def _layer(seed=0, n_in=6, n_out=5):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(np.sort(rng.uniform(0.0, 1.5, n_in)), F64)
    w = jnp.asarray(rng.normal(1.2, 0.8, (n_in, n_out)), F64)
    return x, w


def test_spike_times_at_the_model_times_is_the_model():
    x, w = _layer()
    params = LIFParams(1.0, 1.0, 1.0)
    t = layer_spike_times(x, w, params)
    assert np.isfinite(t).sum() >= 3

    def total(f, x, w):
        out = f(x, w)
        return jnp.sum(jnp.where(jnp.isfinite(out), out, 0.0) ** 2)

    model = jax.grad(lambda x, w: total(lambda a, b: layer_spike_times(a, b, params), x, w), (0, 1))(x, w)
    at = jax.grad(lambda x, w: total(lambda a, b: spike_times_at(t, a, b, params), x, w), (0, 1))(x, w)
    np.testing.assert_array_equal(spike_times_at(t, x, w, params), t)
    for a, b in zip(model, at):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_spike_times_at_other_times_uses_the_model_membrane_there():
    """dT/dw_i = -(dV/dw_i) / (dV/dt) of the model's membrane at the observed T, by autodiff."""
    x, w = _layer(1, n_out=1)
    params = LIFParams(1.0, 1.0, 1.0)
    t_model = float(layer_spike_times(x, w, params)[0])
    observed = jnp.asarray([t_model + 0.1], F64)  # e.g. a chip neuron with a higher threshold
    grad = jax.grad(lambda w: spike_times_at(observed, x, w, params)[0])(w)

    def v(t, w):
        return membrane_potential(t, x, w[:, 0], params)

    expected = -jax.grad(v, 1)(observed[0], w) / jax.grad(v, 0)(observed[0], w)
    np.testing.assert_allclose(grad, expected, rtol=1e-10)
    silent = jax.grad(lambda w: spike_times_at(jnp.asarray([jnp.inf], F64), x, w, params)[0])(w)
    np.testing.assert_array_equal(silent, 0.0)
    # a slope floor below the membrane's slope there changes nothing ...
    low = jax.grad(lambda w: spike_times_at(observed, x, w, params, min_slope=1e-3)[0])(w)
    np.testing.assert_allclose(low, expected, rtol=1e-10)
    # ... and past the membrane's peak (slope <= 0) the floor is the denominator
    late = jnp.asarray([t_model + 3.0], F64)
    assert float(jax.grad(v, 0)(late[0], w)) < 0
    floored = jax.grad(lambda w: spike_times_at(late, x, w, params, min_slope=0.5)[0])(w)
    np.testing.assert_allclose(floored, -jax.grad(v, 1)(late[0], w) / 0.5, rtol=1e-10)  # (theta - E_l)/tau_s = 1
    with pytest.raises(ValueError, match="min_slope"):
        spike_times_at(observed, x, w, params, min_slope=0.0)


def test_quantize_weights_rounds_clips_and_is_odd():
    w = jnp.asarray([0.0, 0.01, 0.02, -0.03, 1.0, 7.5, -9.0], F64)
    q = sub.quantize_weights(w, 63, 6.0)  # 6 bits, steps of 6/63
    step = 6.0 / 63
    np.testing.assert_allclose(q, np.clip(np.round(np.asarray(w) / step), -63, 63) * step)
    assert float(q.max()) == pytest.approx(6.0) and float(q.min()) == pytest.approx(-6.0)
    np.testing.assert_array_equal(sub.quantize_weights(-w, 63, 6.0), -q)
    assert len(np.unique(np.asarray(sub.quantize_weights(jnp.linspace(-7, 7, 1001), 7, 1.0)))) == 15  # ±7 steps
    assert float(sub.substrate_values(sub.Substrate(weight_bits=6, weight_max=(1.0,)), 1)["levels"]) == 63


def test_chip_pattern_scales_with_variation_and_kills_neurons():
    pattern = sub.draw_pattern(jax.random.key(3), (4000,), F64)[0]
    ideal = LIFParams(2.0, 1.0, 1.5, 1.0, 0.5)
    same, alive = sub.chip_neurons(ideal, pattern, 0.0, 0.0)
    for field, value in zip(LIFParams._fields, ideal):
        np.testing.assert_array_equal(getattr(same, field), value)
    assert bool(alive.all())
    chip, alive = sub.chip_neurons(ideal, pattern, 0.1, 0.25)
    assert np.std(chip.tau_m / 2.0) == pytest.approx(0.1, rel=0.05)
    assert np.std((chip.threshold - 0.5) / 1.0) == pytest.approx(0.1, rel=0.05)
    assert np.mean(~np.asarray(alive)) == pytest.approx(0.25, abs=0.02)
    extreme, _ = sub.chip_neurons(ideal, pattern, 1.0, 0.0)
    assert float(extreme.tau_s.min()) >= 0.1 * 1.0 - 1e-12  # floored: never <= 0
    again = sub.draw_pattern(jax.random.key(3), (4000,), F64)[0]
    np.testing.assert_array_equal(again["z"], pattern["z"])  # a chip is its seed


def test_euler_integration_converges_to_the_exact_spike_times():
    x, w = _layer(2, n_in=8, n_out=6)
    x = x.at[3].set(jnp.inf)  # a silent input
    for params in (LIFParams(1.0, 1.0, 1.0), LIFParams(2.0, 1.0, 1.0, 0.5, 0.2)):
        exact = layer_spike_times(x, w, params, solver="root")
        fired = np.isfinite(exact)
        assert fired.sum() >= 3
        errors = []
        for dt in (0.02, 0.002):
            euler = sub.euler_spike_times(x, w, params, dt, 8.0)
            np.testing.assert_array_equal(np.isfinite(euler), fired)
            errors.append(np.max(np.abs(np.asarray(euler - exact)[fired])))
        assert errors[1] < 0.2 * errors[0] and errors[1] < 0.02  # first order
    oracle = simulate_neuron(np.asarray(x), np.asarray(w[:, 0]), LIFParams(1.0, 1.0, 1.0)).spike_time
    assert float(sub.euler_spike_times(x, w[:, :1], LIFParams(), 1e-3, 8.0)[0]) == pytest.approx(oracle, abs=3e-3)
    late = sub.euler_spike_times(x, w, LIFParams(), 0.01, 0.05)  # horizon before any spike
    assert bool(jnp.all(jnp.isinf(late)))
    for dt, t_max in ((0.0, 8.0), (-0.01, 8.0), (0.01, np.inf), (np.nan, 8.0)):  # (division by zero, or nonsense)
        with pytest.raises(ValueError, match="`dt` and `t_max` must be > 0 and finite"):
            sub.euler_spike_times(x, w, LIFParams(), dt, t_max)
    # a step >= tau: decay factors <= 0, every neuron "fired" at 1.0 (dt 0.5 gave that too, but converges)
    for dt, params in (
        (1.0, LIFParams()),
        (1.5, LIFParams()),
        (0.6, LIFParams(tau_m=0.5)),
        (0.5, LIFParams(tau_m=jnp.full(6, 2.0).at[2].set(0.4))),
    ):
        with pytest.raises(ValueError, match=r"`dt` \(.*\) must be below the time constants .* oscillate"):
            sub.euler_spike_times(x, w, params, dt, 8.0)
    with pytest.raises(ValueError, match=r"`weights` must have shape \[n_in, n_out\]"):  # (an IndexError)
        sub.euler_spike_times(x, w[:3], LIFParams(), 0.01, 8.0)
    with pytest.raises(TypeError, match="`params` must be an fsnn.LIFParams"):
        sub.euler_spike_times(x, w, {"tau_m": 2.0}, 0.01, 8.0)


def test_jitter_moves_spikes_and_keeps_silence():
    times = jnp.asarray([0.5, jnp.inf, 1.0] * 2000, F64)
    out = sub.jitter(jax.random.key(0), times, 0.05)
    assert bool(jnp.all(jnp.isinf(out[1::3])))
    assert np.std(np.asarray(out[0::3]) - 0.5) == pytest.approx(0.05, rel=0.05)


def _net():
    return SpikingNetwork(4, (20, 3), init=((1.5, 0.8), (0.5, 0.8)), param_dtype=F64, rngs=nnx.Rngs(0))


def test_ideal_substrate_is_the_model_with_the_model_gradients():
    net = _net()
    graphdef, state = nnx.split(net)
    x = jnp.asarray([0.2, 0.5, 1.0, 1.7], F64)
    ideal = sub.Substrate()
    values = sub.substrate_values(ideal, 2, F64)

    def loss(state, on_chip):
        model = nnx.merge(graphdef, state)
        t = sub.network_on_substrate(model, x, values, jax.random.key(0), ideal)[-1] if on_chip else model(x)[-1]
        return jnp.sum(jnp.where(jnp.isfinite(t), t, 0.0) ** 2)

    value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    (chip_value, chip_grads), (model_value, model_grads) = value_and_grad(state, True), value_and_grad(state, False)
    assert float(chip_value) == float(model_value)
    for a, b in zip(jax.tree.leaves(chip_grads), jax.tree.leaves(model_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_imperfect_substrate_changes_times_and_keeps_gradients_finite():
    net = _net()
    graphdef, state = nnx.split(net)
    x = jnp.asarray([[0.2, 0.5, 1.0, 1.7], [1.9, 0.15, 0.3, 1.0]], F64)
    chip = sub.Substrate(variation=0.2, weight_bits=4, weight_max=(3.0, 3.0), jitter=0.05, dead_fraction=0.2)
    values = sub.substrate_values(chip, 2, F64)
    keys = jax.random.split(jax.random.key(1), 2)

    def loss(state):
        model = nnx.merge(graphdef, state)
        times = jax.vmap(lambda xi, k: sub.network_on_substrate(model, xi, values, k, chip))(x, keys)
        return jnp.sum(jnp.where(jnp.isfinite(times[-1]), times[-1], 0.0)), times

    (value, times), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
    ideal = jax.vmap(net)(x)
    assert not np.allclose(np.asarray(times[0]), np.asarray(ideal[0]))
    assert np.isinf(np.asarray(times[0])).any()  # dead neurons stay silent
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert any(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))


def test_activity_counts_spikes_and_synaptic_events():
    x = jnp.asarray([[0.1, jnp.inf], [0.2, 0.3]], F64)
    hidden = jnp.asarray([[1.0, jnp.inf, 2.0], [jnp.inf, jnp.inf, 1.5]], F64)
    out = jnp.asarray([[3.0, 2.5], [jnp.inf, jnp.inf]], F64)
    a = activity(x, [hidden, out], n_bias=1)
    # inputs (+1 bias): 2 and 3 spikes -> 2.5 mean, x 3 targets; hidden (+1 bias): 3 and 2 -> 2.5 x 2
    assert float(a["synaptic_events"]) == pytest.approx(2.5 * 3 + 2.5 * 2)
    assert float(a["decision_time"]) == pytest.approx(2.5)  # the second image never decides
    assert float(a["decided_fraction"]) == 0.5  # (a decision time alone did not tell how many decided)
    np.testing.assert_allclose(a["spikes_per_neuron"], [0.5, 0.5])
    summary = activity_summary(a, tau_us=6.0)
    assert (summary["decision_time"], summary["decision_time_us"]) == pytest.approx((2.5, 15.0))
    # no image decides: no decision time in the report (it said 0.0, an instant decision)
    silent = activity_summary(activity(x, [hidden, jnp.full_like(out, jnp.inf)], n_bias=1), tau_us=6.0)
    assert (silent["decision_time"], silent["decision_time_us"], silent["decided_fraction"]) == (None, None, 0.0)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("substrate_variation", 1.5, "[0, 1]"),
        ("substrate_weight_bits", 0, "1..16"),
        ("substrate_weight_max", (1.0,), "(values > 0, or () for |init mean| + 3 init std) needs one entry per layer"),
        ("substrate_jitter", -0.1, ">= 0"),
        ("substrate_dead_fraction", 1.0, "[0, 1)"),
        ("substrate_dt", 1e-6, "at most 1e5 steps"),
        ("substrate_dt", 1.0, "(the Euler step) must be below `tau_m` and `tau_s` (1.0, 1.0;"),
        ("substrate_tau_us", 0.0, "> 0"),
        ("in_the_loop_min_slope", -0.1, "> 0"),
    ],
)
def test_bad_substrate_keys_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=key) as info:
        apply_overrides(Config(), {key: value})
    assert message in str(info.value)


def test_in_the_loop_on_an_ideal_substrate_trains_like_the_ideal_model():
    base = Config(hidden=(12,), train_size=300, eval_size=100, batch_size=50, dtype="float64")
    states = []
    for config in (base, dataclasses.replace(base, in_the_loop=True)):
        trainer = Trainer(config)
        x, y = load_data(config)["train"]
        state, _ = trainer.train_epoch(trainer.init_state(), x, y)
        states.append(state.params)
    for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_in_the_loop_run_learns_and_reports_both_sides(tmp_path):
    config = load_config("yinyang_substrate", smoke=True)
    results = train_and_evaluate(config, tmp_path / "run", quiet=True, figures=False)
    assert results["test_accuracy"] == results["substrate_test_accuracy"] >= 0.6
    assert 0.0 <= results["ideal_test_accuracy"] <= 1.0
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    for key in ("test_decision_time", "test_decision_time_us", "test_spikes_per_neuron", "test_synaptic_events"):
        assert key in saved
    assert 0 < saved["test_decided_fraction"] <= 1
    assert saved["test_decision_time_us"] == pytest.approx(6.0 * saved["test_decision_time"])
    assert all(0 <= s <= 1 for s in saved["test_spikes_per_neuron"])
    again = evaluate_run(tmp_path / "run")  # the jitter of an evaluation depends on the chip seed only
    assert again["substrate_test_accuracy"] == results["substrate_test_accuracy"]
    assert again["ideal_test_accuracy"] == results["ideal_test_accuracy"]


def test_in_the_loop_training_is_not_stopped_by_dead_neurons():
    """40 % dead neurons (above `max_missing`: 30 % of the hidden layer): every batch was bumped and
    none took an optimizer step; the chip's dead neurons are now no bump's business."""
    config = dataclasses.replace(load_config("yinyang_substrate", smoke=True), substrate_dead_fraction=0.4, epochs=2)
    alive = sub.alive_neurons(hyperparameters(config)["substrate"], config.sizes)
    assert 1 - float(jnp.mean(alive[0])) > config.max_missing[0]
    trainer, data = Trainer(config), load_data(config)
    state = trainer.init_state()
    batches = math.ceil(config.train_size / config.batch_size)
    for _ in range(config.epochs):
        before = int(state.opt_state.inner_state[0].count)  # Adam's steps (a bump changes weights too)
        state, summary = trainer.train_epoch(state, *data["train"])
        stepped = int(state.opt_state.inner_state[0].count) - before
        assert stepped == batches - int(jnp.sum(summary["bumps"])) > 0  # every unbumped batch stepped
    on_chip = trainer.evaluate(state.params, *data["test"], on_substrate=True)
    for times, live in zip(on_chip["times"], alive):  # the trainer's dead neurons are the chip's
        fired = jnp.any(jnp.isfinite(times), axis=0)
        assert not bool(jnp.any(fired & ~live)) and bool(jnp.any(fired))


def test_a_chip_that_cannot_fire_is_said_and_its_run_stays_finite(tmp_path, capsys):
    """A weight range (0.3 per weight) that cannot reach threshold: every batch is bumped. The run
    said nothing, its bump doubled the weights to inf (after ≈ 140 bumps) and its figures failed."""
    base = load_config("yinyang_substrate", smoke=True)
    config = dataclasses.replace(base, substrate_weight_max=(0.3, 0.3), epochs=40)
    train_and_evaluate(config, tmp_path / "run")
    assert "fsnn: note: every batch of the last epoch was bumped (layer 1)" in capsys.readouterr().err
    assert (tmp_path / "run" / "figures" / "weight_histograms.png").is_file()
    _, _, state = restore_run(tmp_path / "run")
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(state.params))


def test_sweep_groups_by_chip_code_and_reports_both_sides():
    base = dataclasses.replace(
        load_config("yinyang_substrate", smoke=True), hidden=(10,), epochs=1, train_size=150, eval_size=100
    )
    assert group_key(dataclasses.replace(base, substrate_variation=0.0)) != group_key(base)  # exact vs root chip
    assert group_key(dataclasses.replace(base, substrate_variation=0.2)) == group_key(base)
    assert group_key(dataclasses.replace(base, substrate_weight_bits=None)) != group_key(base)
    # transfer (ideal training) on a chip that differs by quantisation and jitter only: one cheap group
    transfer = dataclasses.replace(base, in_the_loop=False, substrate_variation=0.0)
    configs = [dataclasses.replace(transfer, substrate_weight_bits=b, substrate_seed=b) for b in (2, 6)]
    rows, states = sweep(configs, quiet=True)
    assert [r["group_runs"] for r in rows] == [2, 2]
    assert rows[0]["test_accuracy"] == rows[0]["ideal_test_accuracy"] == rows[1]["ideal_test_accuracy"]
    trainer, test = Trainer(configs[0]), load_data(configs[0])["test"]
    for config, row, state in zip(configs, rows, states):  # as a single run is tested on its chip
        alone = trainer.evaluate(state.params, *test, hyperparameters(config), on_substrate=True)
        assert row["substrate_test_accuracy"] == float(alone["accuracy"])


def test_robustness_study_smoke(tmp_path):
    path = EXPERIMENTS_DIR / "substrate_robustness.py"
    spec = importlib.util.spec_from_file_location("substrate_robustness", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.run(tmp_path, smoke=True, seeds=1)
    saved = json.loads((tmp_path / "study.json").read_text())
    points = module.scan_points(smoke=True)
    assert len(saved["table"]) == len(points) and (tmp_path / "robustness.png").is_file()
    for row in report["table"]:
        for method in module.METHODS:
            assert 0 <= row[method]["mean"] <= 1 and len(row[method]["runs"]) == 1
    assert set(saved["activity_at_hardware_point"]) == set(module.METHODS)
    for kwargs, message in (({}, "already holds this study's sweeps"), ({"seeds": 0}, "`seeds` be >= 1")):
        with pytest.raises(ConfigError, match=message):  # (after loading and training, or "pass --resume")
            module.run(tmp_path, smoke=True, **kwargs)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"variation": -0.1}, "`variation` is a relative spread in [0, 1]; got -0.1."),
        ({"dead_fraction": 1.0}, "`dead_fraction` must lie in [0, 1); got 1.0."),
        ({"dt": 0.0}, "`dt` must be > 0 with at most 1e5 steps up to `t_max` (8.0), or None (exact); got 0.0."),
        ({"weight_bits": 0}, "`weight_bits` must be a whole number in 1..16, or None (float weights); got 0."),
        ({"weight_bits": 3.5}, "`weight_bits` must be a whole number in 1..16, or None (float weights); got 3.5."),
        ({"weight_bits": True}, "`weight_bits` must be a whole number in 1..16, or None (float weights); got True."),
        ({"jitter": -1.0}, "`jitter` must be >= 0; got -1.0."),
        (
            {"weight_bits": 4, "weight_max": (1.0, math.inf)},
            "`weight_max` values must be > 0 and finite; got (1.0, inf)",
        ),
        ({"seed": 1.5}, "`seed` must be a whole number; got 1.5."),
        ({"tau_us": math.inf}, "`tau_us` must be > 0 and finite; got inf."),
    ],
)
def test_an_impossible_substrate_is_named(values, message):
    """The Python API checks what the `substrate_*` config keys check (one rule set for both)."""
    with pytest.raises(ValueError, match=re.escape(message)):
        sub.Substrate(**values)


def test_a_substrate_holds_weight_max_as_a_tuple():
    chip = sub.Substrate(weight_bits=4, weight_max=[1.0, 2.0])  # a list would make it unhashable
    assert chip.weight_max == (1.0, 2.0) and hash(chip) == hash(sub.Substrate(weight_bits=4, weight_max=(1.0, 2.0)))
