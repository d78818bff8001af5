"""Hypergradients through unrolled training: finite differences in float64, remat, tuning."""

import dataclasses
import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsnn.train import hypergrad
from fsnn.train.config import EXPERIMENTS_DIR, Config, ConfigError
from fsnn.train.hypergrad import get_hyper, grid_search, hypergradient, tune, unrolled_validation_loss, with_hyper
from fsnn.train.loop import Trainer, load_data

# input noise, gradient drop and weight bumping stay on: the hypergradient goes through all of them
CONFIG = Config(train_size=120, eval_size=100, hidden=(8,), batch_size=30, dtype="float64", input_noise=0.1)
STEPS = 6  # more than one epoch (4 batches): the second epoch's shuffle is used too


@pytest.fixture(scope="module")
def setup():
    jax.config.update("jax_enable_x64", True)
    trainer = Trainer(CONFIG)
    data = load_data(CONFIG)
    return trainer, data["train"], data["validation"]


def assert_matches_finite_differences(trainer, names, train, val):
    loss, grads = hypergradient(trainer, names, train, val, steps=STEPS)
    objective = jax.jit(lambda hp: unrolled_validation_loss(trainer, hp, train, val, steps=STEPS))
    assert float(objective(trainer.hp)) == pytest.approx(float(loss), rel=1e-12)
    for name in names:
        value = np.asarray(get_hyper(trainer.hp, name))
        fd = np.zeros(value.size)
        for j in range(value.size):
            eps = 1e-6 * max(1.0, abs(value.flat[j]))
            up, down = value.copy(), value.copy()
            up.flat[j] += eps
            down.flat[j] -= eps
            diff = objective(with_hyper(trainer.hp, {name: jnp.asarray(up)})) - objective(
                with_hyper(trainer.hp, {name: jnp.asarray(down)})
            )
            fd[j] = float(diff) / (2 * eps)
        got = np.asarray(grads[name]).ravel()
        assert np.all(np.abs(got) > 0), name  # every hyperparameter really moves the result
        np.testing.assert_allclose(got, fd, rtol=1e-4, atol=1e-9, err_msg=name)


def test_hypergradient_matches_finite_differences(setup):
    trainer, train, val = setup
    assert_matches_finite_differences(trainer, ["learning_rate", "xi", "init", "threshold"], train, val)


def test_hypergradient_through_learned_thresholds(setup):
    """With thresholds learned per neuron: the neuron learning-rate scale and the thresholds'
    initial value (the start of the learned ones)."""
    _, train, val = setup
    trainer = Trainer(
        dataclasses.replace(CONFIG, trainable_neuron=("threshold",), per_neuron=True, neuron_lr_scale=0.5)
    )
    assert_matches_finite_differences(trainer, ["neuron_lr_scale", "threshold"], train, val)


def test_hypergradient_is_finite_where_gradient_entries_are_exactly_zero():
    """The published network: silent hidden neurons give exactly-zero weight gradients, where
    d sqrt(v)/dv of Adam would be inf * 0 = nan without `adam_eps_root`."""
    jax.config.update("jax_enable_x64", True)
    config = Config(train_size=150, eval_size=50, dtype="float64")
    trainer = Trainer(config)
    data = load_data(config)
    _, grads = hypergradient(trainer, ["threshold"], data["train"], data["validation"], steps=1)
    objective = jax.jit(
        lambda th: unrolled_validation_loss(
            trainer, with_hyper(trainer.hp, {"threshold": th}), data["train"], data["validation"], steps=1
        )
    )
    theta = np.asarray(get_hyper(trainer.hp, "threshold"))
    eps = 1e-6
    for j in range(theta.size):
        step = np.eye(theta.size)[j] * eps
        fd = float(objective(jnp.asarray(theta + step)) - objective(jnp.asarray(theta - step))) / (2 * eps)
        assert float(grads["threshold"][j]) == pytest.approx(fd, rel=1e-4, abs=1e-9)


def test_remat_changes_nothing_and_truncation_changes_the_gradient(setup):
    trainer, train, val = setup
    names = ["learning_rate", "bump_value"]
    loss, grads = hypergradient(trainer, names, train, val, steps=STEPS)
    other_loss, other = hypergradient(trainer, names, train, val, steps=STEPS, remat=False)
    assert float(other_loss) == pytest.approx(float(loss), rel=1e-12)
    for name in names:
        np.testing.assert_allclose(other[name], grads[name], rtol=1e-9, atol=1e-15)
    _, truncated = hypergradient(trainer, names, train, val, steps=STEPS, window=2)
    assert np.isfinite(float(truncated["learning_rate"]))
    assert float(truncated["learning_rate"]) != pytest.approx(float(grads["learning_rate"]), rel=1e-6)


def test_bad_names_and_windows_are_rejected(setup):
    trainer, train, val = setup
    with pytest.raises(ConfigError, match="choose from"):
        hypergradient(trainer, ["seed"], train, val, steps=2)
    with pytest.raises(ConfigError, match="root"):
        hypergradient(trainer, ["tau_m"], train, val, steps=2)
    with pytest.raises(ConfigError, match="`neuron_lr_scale` needs learned neuron parameters"):
        hypergradient(trainer, ["neuron_lr_scale"], train, val, steps=2)
    with pytest.raises(ConfigError, match="window"):
        hypergradient(trainer, ["xi"], train, val, steps=2, window=3)
    for steps in (0, 2.5):  # (0 blamed `window`; 2.5 was a TypeError from deep inside)
        with pytest.raises(
            ConfigError, match=rf"`steps` \(training steps to unroll\) must be a whole number >= 1; got {steps}\."
        ):
            hypergradient(trainer, ["xi"], train, val, steps=steps)
    with pytest.raises(ConfigError, match=r"`window` must be a whole number in \[1, steps=2\]; got 1\.5\."):
        hypergradient(trainer, ["xi"], train, val, steps=2, window=1.5)
    with pytest.raises(ConfigError, match=r"`iterations` \(descent steps\) must be a whole number >= 0; got -1\."):
        tune(trainer, ["xi"], train, val, steps=2, iterations=-1)  # (it returned no rows)
    for meta_lr in (-0.1, 0.0, float("nan")):  # (ascended, stood still, or went nan)
        with pytest.raises(ConfigError, match=r"`meta_lr` \(the descent's Adam step size\) must be > 0 and finite"):
            tune(trainer, ["xi"], train, val, steps=2, iterations=1, meta_lr=meta_lr)
    with pytest.raises(ConfigError, match=r"`grid` lists no values for \['xi'\]"):
        grid_search(trainer, {"xi": [], "learning_rate": [0.01]}, train, val, steps=2)  # (a stacking error)
    x, y = train
    for run in (hypergradient, grid_search, tune):
        names = {"xi": [0.1, 0.2]} if run is grid_search else ["xi"]
        with pytest.raises(ValueError, match=r"^`train`: 1 labels outside 0..2 \(dataset 'yinyang'\)\.$"):
            run(trainer, names, (x, y.at[0].set(3)), val, steps=2, **({"iterations": 1} if run is tune else {}))
        with pytest.raises(ValueError, match=r"^`validation`: labels must be integers of shape \(50,\)"):
            run(trainer, names, train, (val[0][:50], val[1]), steps=2, **({"iterations": 1} if run is tune else {}))


def test_values_outside_the_model_are_rejected_before_anything_compiles(setup, monkeypatch):
    trainer, train, val = setup
    for values, message in (
        ({"threshold": 0.0}, r"`threshold` must exceed `e_leak` \(\[0.0, 0.0\]\); got \[0.0, 0.0\]"),
        ({"threshold": [1.0, 2.0], "e_leak": 1.5}, "`threshold` must exceed `e_leak`"),
        ({"tau_s": 0.0}, "`tau_s` must be > 0"),
        ({"learning_rate": float("nan")}, "`learning_rate` must be finite"),
        # (each trained without a word: a seed or step cut to a whole number, a nan loss, no clipping)
        ({"learning_rate": float("inf")}, r"`learning_rate` must be finite; got inf"),
        ({"silent_loss": float("nan")}, "`silent_loss` must be finite"),
        ({"seed": 1.5}, r"`seed` must be a whole number; got 1.5"),
        ({"seed": 2**31}, r"`seed` must be a 32-bit integer"),
        ({"lr_step": 2.5}, "`lr_step` must be a whole number"),
        ({"lr_step": 0}, r"`lr_step` must be >= 1; got 0"),
        ({"max_missing": [0.3, 1.5]}, r"`max_missing` fractions must lie in \[0, 1\]"),
        ({"max_dw_norm": -1.0}, "`max_dw_norm` must be >= 0"),
        ({"input_noise": -0.1}, "`input_noise` must be >= 0"),
        ({"init": [[0.5, 0.1], [0.5, -0.1]]}, "`init` needs"),
    ):
        with pytest.raises(ConfigError, match=message):
            with_hyper(trainer.hp, values)
    monkeypatch.setattr(hypergrad.xla, "jit", lambda *a, **k: pytest.fail("compiled before checking"))
    with pytest.raises(ConfigError, match="`threshold` must exceed"):
        grid_search(trainer, {"xi": [0.2, 0.5], "threshold": [1.0, -0.5]}, train, val, steps=STEPS)
    with pytest.raises(ConfigError, match="choose from .*learning_rate"):
        grid_search(trainer, {"batch_size": [10, 20]}, train, val, steps=STEPS)
    start = {**trainer.hp, "learning_rate": -trainer.hp["learning_rate"]}  # edited by hand, unchecked
    with pytest.raises(ConfigError, match="tune: the starting values left the model: .*`learning_rate`"):
        tune(trainer, ["learning_rate", "bump_value"], train, val, steps=STEPS, iterations=1, hp=start)


def test_a_grid_points_seed_is_its_runs_seed(setup):
    """(It ordered the data only: the initial kernels stayed those of the trainer's seed.)"""
    trainer, train, val = setup
    rows = grid_search(trainer, {"seed": [0, 3]}, train, val, steps=STEPS)
    for row in rows:
        alone = Trainer(dataclasses.replace(CONFIG, seed=row["seed"]))
        single = jax.jit(lambda hp, alone=alone: unrolled_validation_loss(alone, hp, train, val, steps=STEPS))
        assert row["loss"] == pytest.approx(float(single(alone.hp)), rel=1e-9)
    assert rows[0]["loss"] != rows[1]["loss"]


def test_one_name_may_be_a_string_and_names_count_once(setup):
    """("xi" was taken as the names "x" and "i".)"""
    trainer, train, val = setup
    loss, grads = hypergradient(trainer, "xi", train, val, steps=STEPS)
    again, same = hypergradient(trainer, ["xi", "xi"], train, val, steps=STEPS)
    assert list(grads) == list(same) == ["xi"] and float(loss) == float(again)
    assert float(grads["xi"]) == float(same["xi"])
    assert [set(row) for row in tune(trainer, "xi", train, val, steps=STEPS, iterations=0)] == [
        {"iteration", "loss", "xi"}
    ]


def test_descent_keeps_what_must_not_be_negative_at_zero_or_above(setup):
    trainer, train, val = setup
    start = {**with_hyper(trainer.hp, {"input_noise": 0.0}), "seed": jnp.asarray(1, jnp.int32)}
    _, grads = hypergradient(trainer, ["input_noise"], train, val, steps=STEPS, hp=start)
    assert float(grads["input_noise"]) > 0  # so a plain step would give the noise a negative std
    history = tune(trainer, ["input_noise"], train, val, steps=STEPS, iterations=1, meta_lr=0.05, hp=start)
    assert [row["input_noise"] for row in history] == [0.0, 0.0]


def test_grid_points_equal_single_evaluations_and_descent_descends(setup):
    trainer, train, val = setup
    rows = grid_search(trainer, {"learning_rate": [0.002, 0.02], "xi": np.array([0.2, 0.5])}, train, val, steps=STEPS)
    assert len(rows) == 4
    fixed = grid_search(trainer, {"learning_rate": [0.002, 0.02], "xi": 0.5}, train, val, steps=STEPS)  # one value
    assert [(r["learning_rate"], r["xi"], r["loss"]) for r in fixed] == [
        (r["learning_rate"], r["xi"], r["loss"]) for r in rows if r["xi"] == 0.5
    ]
    single = jax.jit(lambda hp: unrolled_validation_loss(trainer, hp, train, val, steps=STEPS))
    for row in rows:
        hp = with_hyper(trainer.hp, {k: jnp.asarray(row[k], jnp.float64) for k in ("learning_rate", "xi")})
        assert row["loss"] == pytest.approx(float(single(hp)), rel=1e-9)
    names = ["learning_rate", "bump_value"]  # compiled already by the remat test (cached per trainer)
    history = tune(trainer, names, train, val, steps=STEPS, iterations=2, meta_lr=0.02)
    assert len(history) == 3
    assert history[1]["loss"] < history[0]["loss"]  # a small step against the exact gradient helps


def test_study_experiment_smoke(tmp_path):
    path = EXPERIMENTS_DIR / "yinyang_hypergrad.py"
    spec = importlib.util.spec_from_file_location("yinyang_hypergrad", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.run(tmp_path, smoke=True)
    saved = json.loads((tmp_path / "study.json").read_text())
    assert saved["descent"]["evaluations"] == 3 and saved["grid"]["evaluations"] == 4
    assert report["best"]["grid"]["loss"] == min(r["loss"] for r in saved["grid"]["rows"])
    (tmp_path / "confirm").mkdir()
    for workdir, seeds, message in (
        (tmp_path, 1, "holds a confirmation sweep"),
        ("", 0, "`workdir` must name a folder"),
    ):
        with pytest.raises(ConfigError, match=message):  # before the study's minutes of work, not after
            module.run(workdir, smoke=True, confirm_seeds=seeds)
    assert all(np.isfinite(r["loss"]) for r in saved["descent"]["rows"])
