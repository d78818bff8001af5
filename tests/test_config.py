"""fsnn.train.config: parsing, validation, experiment files."""

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jax
import numpy as np
import pytest

import fsnn
from fsnn.train import Config, ConfigError, apply_overrides, load_config


def test_published_yinyang_config():
    c = load_config("yinyang")
    assert c.sizes == (120, 3) and c.n_inputs == 4 and c.bias_times == (0.9,)
    assert (c.learning_rate, c.lr_step, c.lr_gamma, c.batch_size, c.epochs) == (0.005, 20, 0.95, 150, 300)
    assert c.init == ((1.5, 0.8), (0.5, 0.8)) and (c.xi, c.alpha) == (0.2, 0.005)
    assert c.tau_m == c.tau_s


def test_overrides_parse_types():
    c = apply_overrides(
        Config(), {"hidden": "(64, 32)", "init": "((1,1),(1,1),(0.5,0.8))", "max_missing": "0.3,0.1,0.0"}
    )
    assert c.hidden == (64, 32) and c.init[2] == (0.5, 0.8) and c.max_missing == (0.3, 0.1, 0.0)
    assert apply_overrides(Config(), {"max_dw_norm": "None"}).max_dw_norm is None
    assert apply_overrides(Config(), {"weight_bumping": "false"}).weight_bumping is False
    assert apply_overrides(Config(), {"learning_rate": "1"}).learning_rate == 1.0


def test_python_values_take_the_field_types():
    """As `--set` values do: lists and arrays become tuples, one number a 1-tuple, NumPy scalars and
    ints Python numbers, so a config from a notebook compares, hashes and saves like any other."""
    c = Config(
        hidden=np.array([16]),
        init=[[1.5, 0.8], (0.5, np.float64(0.8))],
        max_missing=[0.3, 0],
        epochs=np.int64(3),
        learning_rate=1,
        xi=jax.numpy.asarray(0.25),  # e.g. a value a hypergradient step returned
        trainable_neuron="threshold",
    )
    assert (c.hidden, c.init, c.max_missing, c.trainable_neuron) == (
        (16,),
        ((1.5, 0.8), (0.5, 0.8)),
        (0.3, 0.0),
        ("threshold",),
    )
    assert type(c.epochs) is int and type(c.init[1][1]) is float
    assert (type(c.learning_rate), type(c.xi), c.xi) == (float, float, 0.25)
    assert Config(hidden=16, max_missing=(0.3, 0.0)) == Config(hidden=(16,), max_missing=(0.3, 0.0))
    assert hash(c) == hash(Config.from_dict(json.loads(c.to_json())))


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"epochs": 2.0}, r"`epochs` expects int; got 2\.0\."),  # (range() failed deep inside the run)
        ({"learning_rate": "0.1"}, r"`learning_rate` expects float; got '0\.1'\."),  # strings are not parsed
        ({"select_best": 1}, r"`select_best` expects bool; got 1\."),
        ({"hidden": (16.5,)}, r"`hidden` expects tuple\[int, \.\.\.\]; got \(16\.5,\)\."),
        # the whole value against the whole type (it named the inner part: "`init` expects tuple; got (1.5,)")
        ({"init": (1.5, 0.8)}, r"`init` expects tuple\[tuple\[float, float\], \.\.\.\]; got \(1\.5, 0\.8\)\."),
        ({"mse_targets": 1.5}, r"`mse_targets` expects tuple\[float, float\]; got 1\.5\."),
    ],
)
def test_python_values_of_the_wrong_type_are_named(values, match):
    with pytest.raises(ConfigError, match=match):
        Config(**values)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("foo", "1", "unknown config key `foo`"),
        ("epochs", "2.5", "`epochs` expects int"),
        ("epochs", "0", "`epochs` must be a positive integer"),
        ("batch_size", "-3", "`batch_size` must be a positive integer"),
        ("tau_m", "0", "`tau_m` must be > 0"),
        ("tau_s", "-1", "`tau_s` must be > 0"),
        ("threshold", "-1", "`threshold` must exceed"),
        ("loss", "'hinge'", "`loss` must be one of"),
        ("hidden", "(0,)", "`hidden` sizes"),
        ("solver", "'quadratic'", "'quadratic' needs tau_m == 2 tau_s"),
        ("max_missing", "(0.3,)", r"`max_missing` \(fractions\) needs one entry per layer, 2 for sizes"),
        ("trainable_neuron", "('tau',)", "`trainable_neuron`"),
        ("augment_shift", "1", "`augment_shift` translates images and must be 0 for yinyang"),
        ("augment_flip", "True", "`augment_flip` mirrors images and must be False for yinyang"),
        ("dropout", "1.0", "`dropout` is a probability in"),
        ("dropout", "-0.1", "`dropout` is a probability in"),
        ("neuron_lr_scale", "-0.1", "`neuron_lr_scale` must be finite and >= 0"),
        ("neuron_lr_scale", "1e999", "`neuron_lr_scale` must be finite"),
        ("xi", "1e999", r"`xi` must be finite; got inf\."),
        ("bias_times", "(0.9, -1e999)", r"`bias_times` must be finite; got \(0.9, -inf\)"),
        ("init", "((1.5, 0.8), (0.5, 1e999))", "`init` must be finite"),
        ("alpha", "-0.1", "`alpha` must be >= 0"),
        ("adam_b2", "1", r"`adam_b2` is a decay rate in \[0, 1\)"),
        ("adam_b1", "-0.5", "`adam_b1` is a decay rate"),
        ("bump_value", "0", "`bump_value` must be > 0 with `weight_bumping`"),
        # a run's default folder is runs/NAME-seedS: "" gave runs/-seed0, "../x" a folder outside runs/
        ("name", "", r"`name` names the run's default folder .* must be one folder name; got ''"),
        ("name", "'../x'", r"`name` .*; got '\.\./x'"),
        ("name", "'runs/a'", "`name` names the run's default folder"),
        # more samples than a split holds trained on fewer without a word
        ("train_size", "5001", r"`train_size` must be at most 5000, the size of yinyang's train split \(0 = all\)"),
        ("eval_size", "1001", r"`eval_size` must be at most 1000, the size of yinyang's validation and test splits"),
        ("seed", str(2**31), r"`seed` must be a 32-bit integer, -2\*\*31 \.\. 2\*\*31 - 1; got 2147483648\."),
        ("seed", "-99999999999999999999", "`seed` must be a 32-bit integer"),
        ("substrate_seed", str(2**40), "`substrate_seed` must be a 32-bit integer"),
        ("substrate_variation", "1.5", r"`substrate_variation` is a relative spread in \[0, 1\]; got 1\.5\."),
        ("substrate_dt", "0.0", r"`substrate_dt` must be > 0 with at most 1e5 steps up to `substrate_t_max` \(8\.0\)"),
        ("substrate_weight_max", "(1.0, -2.0)", r"`substrate_weight_max` values must be > 0 and finite; got \(1\.0,"),
        ("substrate_weight_max", "(1.0,)", r"`substrate_weight_max` \(values > 0, or \(\) for .*\) needs one entry"),
        # a new `hidden` names every per-layer key to change at once (it named one per attempt)
        (
            "hidden",
            "()",
            r"^config keys `init` \(.*\), `max_missing` \(fractions\) need one entry per layer, 1 for sizes \(3,\)",
        ),
    ],
)
def test_bad_values_fail_with_the_key_named(key, value, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(Config(), {key: value})


def test_image_sizes_are_checked_against_their_splits():
    mnist = load_config("mnist16")
    assert apply_overrides(mnist, {"train_size": "50000", "eval_size": "10000"}).train_size == 50_000
    with pytest.raises(ValueError, match="`train_size` must be at most 50000, the size of mnist16's train split"):
        apply_overrides(mnist, {"train_size": "60000"})


@pytest.mark.parametrize(
    "other",
    [
        {"in_the_loop": "True"},
        {"trainable_neuron": "('threshold',)"},
        {"hidden": "()", "init": "((0.5, 0.8),)", "max_missing": "(0.0,)"},
    ],
)
def test_dropout_only_where_it_acts(other):
    """Dropout acts between the layers of first-order weight training on the ideal model."""
    assert apply_overrides(Config(), {"dropout": "0.2"}).dropout == 0.2
    with pytest.raises(ValueError, match="`dropout` acts between the layers"):
        apply_overrides(Config(), {"dropout": "0.2", **other})


def test_unknown_experiment(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="experiment `nope` not found"):
        load_config("nope")
    (tmp_path / "my_config.txt").write_text("def get_config(): ...\n")  # a file, not a name
    with pytest.raises(ValueError, match="my_config.txt is not a Python file; give a .py file"):
        load_config(str(tmp_path / "my_config.txt"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "yinyang").write_text("")  # a file beside does not hide the experiment of that name
    assert load_config("yinyang").name == "yinyang"


def test_every_experiment_loads_and_validates():
    from fsnn.core.spike_time import resolve_solver
    from fsnn.train.config import EXPERIMENTS_DIR

    names = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.py"))
    assert {"yinyang", "yinyang_best"} <= set(names)
    for name in names:
        config, smoke = load_config(name), load_config(name, smoke=True)
        assert smoke.epochs < config.epochs
    chip = load_config("mnist16_substrate")  # the paper's hardware network, 6-bit weights
    assert (chip.n_inputs, chip.sizes, chip.substrate_weight_bits, chip.in_the_loop) == (256, (246, 10), 6, True)
    best = load_config("yinyang_best")
    assert resolve_solver(best.neuron) == "quadratic" and best.g_leak * best.tau_m == 1.0


def test_image_shift_is_bounded_by_the_image_side():
    assert apply_overrides(load_config("mnist16"), {"augment_shift": "2"}).augment_shift == 2
    with pytest.raises(ConfigError, match=r"`augment_shift` must be a whole number of pixels in 0 \.\. 15"):
        apply_overrides(load_config("mnist16"), {"augment_shift": "16"})


def test_an_installed_fsnn_finds_the_experiments_it_carries(tmp_path):
    """pyproject.toml puts experiments/ into the package as fsnn._experiments: a non-editable install
    (wheel, ``pip install .``) trains `fsnn train yinyang` without the checkout."""
    repo = Path(fsnn.__file__).resolve().parents[1]
    setuptools = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]
    subpackages = {".".join(p.relative_to(repo).parent.parts) for p in (repo / "fsnn").rglob("__init__.py")}
    assert set(setuptools["packages"]) == subpackages | {"fsnn._experiments"}  # a new subpackage is listed
    assert setuptools["package-dir"] == {"fsnn._experiments": "experiments"}
    site = tmp_path / "site"  # the layout of the install
    shutil.copytree(repo / "fsnn", site / "fsnn", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(repo / "experiments", site / "fsnn" / "_experiments")
    script = "from fsnn.train.config import EXPERIMENTS_DIR as d, load_config; print(d, load_config('yinyang').name)"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env={"PYTHONPATH": str(site)}, capture_output=True, text=True
    )
    assert done.stdout.split() == [str(site / "fsnn" / "_experiments"), "yinyang"], done.stderr[-2000:]


def test_a_dict_where_a_config_belongs_is_named(tmp_path):
    """(Each was an AttributeError from deep inside: 'dict' object has no attribute 'dtype'.)"""
    from fsnn.train.loop import Trainer, train_and_evaluate
    from fsnn.train.sweep import expand_grid, sweep

    values = {"epochs": 2}
    for call, name in (
        (lambda: Trainer(values), "config"),
        (lambda: train_and_evaluate(values, tmp_path / "run"), "config"),
        (lambda: apply_overrides(values, {}), "config"),
        (lambda: sweep([Config(), values]), r"configs\[\]"),
        (lambda: expand_grid(values, 2, {}), "base"),
    ):
        with pytest.raises(
            TypeError, match=rf"^`{name}` must be an fsnn.train.Config \(Config\(\*\*values\)\); got dict"
        ):
            call()
    assert not (tmp_path / "run").exists()
