"""Vmapped sweeps: every run equals the same run trained alone; grouping and errors."""

import dataclasses
import json
import re

import jax
import numpy as np
import pytest

from fsnn.cli import main
from fsnn.train import checkpoint
from fsnn.train.config import Config, ConfigError
from fsnn.train.loop import Trainer, evaluate_run, load_data, restore_run
from fsnn.train.sweep import _programs, expand_grid, format_summary, group_key, summarize, sweep, sweep_run_metrics

BASE = Config(train_size=300, eval_size=200, epochs=2, hidden=(12,), batch_size=50, dtype="float64", input_noise=0.1)


def _alone(config: Config):
    trainer = Trainer(config)
    data = load_data(config)
    state = trainer.init_state()
    for _ in range(config.epochs):
        state, _ = trainer.train_epoch(state, *data["train"])
    return state, trainer.evaluate(state.params, *data["test"])


def test_each_swept_run_equals_training_it_alone():
    jax.config.update("jax_enable_x64", True)
    grid = {"learning_rate": [0.005, 0.02], "threshold": [1.0, 1.2], "hidden": [(12,), (6,)]}
    configs = expand_grid(BASE, 2, grid)
    assert len(configs) == 16
    assert len({group_key(c) for c in configs}) == 2  # `hidden` changes shapes: two programs
    rows, states = sweep(configs, quiet=True)
    assert {r["group_runs"] for r in rows} == {8}
    for i in (5, 10):  # both groups, both seeds, every value of each key
        state, test = _alone(configs[i])
        assert rows[i]["config"]["seed"] == configs[i].seed
        assert (
            rows[i]["test_accuracy"] == int(test["correct"]) / BASE.eval_size
        )  # (exactly: 0.35, not 0.35000000000000003)
        for mine, theirs in zip(jax.tree.leaves(states[i].params), jax.tree.leaves(state.params)):
            np.testing.assert_allclose(mine, theirs, rtol=1e-9, atol=1e-12)
    accuracies = {round(r["test_accuracy"], 6) for r in rows}
    assert len(accuracies) > 4  # the runs really differ


def test_sweep_resumes_exactly_and_is_never_overwritten(tmp_path):
    jax.config.update("jax_enable_x64", True)
    short = expand_grid(dataclasses.replace(BASE, epochs=1, select_best=True), 2, {"xi": [0.2, 0.4]})
    long = [dataclasses.replace(c, epochs=3) for c in short]
    straight_rows, straight = sweep(long, tmp_path / "a", quiet=True)
    compiled = _programs(long[0]).train_epoch._cache_size()  # (earlier tests may have added others)
    sweep(short, tmp_path / "b", quiet=True)  # "interrupted" after one epoch
    with (tmp_path / "b" / "metrics.jsonl").open("a") as f:
        f.write('{"group": 0, "epo')  # killed while it wrote the next row
    assert [row["epoch"] for row in sweep_run_metrics(tmp_path / "b", 0)] == [1]
    with pytest.raises(ConfigError, match="--resume"):
        sweep(long, tmp_path / "b", quiet=True)
    with pytest.raises(ConfigError, match="different runs"):
        sweep(long[:2], tmp_path / "b", quiet=True, resume=True)
    log = (tmp_path / "b" / "metrics.jsonl").read_text()
    (tmp_path / "b" / "metrics.jsonl").write_text("{oops\n" + log)  # a line changed by hand
    before = {f: f.read_bytes() for f in (tmp_path / "b").glob("*.json*")}
    with pytest.raises(checkpoint.CheckpointError, match="^line 1 of .*metrics.jsonl is not a row that fsnn wrote"):
        sweep(long, tmp_path / "b", quiet=True, resume=True)
    assert {f: f.read_bytes() for f in before} == before  # (configs.json was rewritten before the log was read)
    (tmp_path / "b" / "metrics.jsonl").write_text(log)
    for _ in range(2):  # continue from epoch 1; then once more, with nothing left to train
        rows, resumed = sweep(long, tmp_path / "b", quiet=True, resume=True)
        for a, b in zip(straight, resumed):
            assert int(b.epoch) == 3
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        for a, b in zip(straight_rows, rows):
            assert (a["test_accuracy"], a["best_epoch"], a["val_accuracy"]) == (
                b["test_accuracy"],
                b["best_epoch"],
                b["val_accuracy"],
            )
    lines = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    # the group's training time is over all calls (the last call, with nothing left to train, said ≈ 0 s)
    assert rows[0]["group_train_seconds"] == pytest.approx(sum(line["seconds"] for line in lines), rel=1e-3)
    saved = json.loads((tmp_path / "b" / "configs.json").read_text())
    assert [Config.from_dict(c) for c in saved] == long
    assert _programs(long[0]).train_epoch._cache_size() == compiled  # resumed states reuse the program


def test_a_float32_sweep_resumes_its_best_epochs_exactly(tmp_path):
    """A tie with the best validation accuracy keeps the earlier epoch after a resume too (the saved
    best accuracy was rounded to float32, below the exact fraction it is compared with)."""
    base = Config(train_size=300, eval_size=200, hidden=(12,), batch_size=50, select_best=True, learning_rate=1e-5)
    short = expand_grid(dataclasses.replace(base, epochs=1), 3, {})  # float32; barely learning: ties
    long = [dataclasses.replace(c, epochs=3) for c in short]
    straight, _ = sweep(long, tmp_path / "a", quiet=True)
    sweep(short, tmp_path / "b", quiet=True)
    resumed, _ = sweep(long, tmp_path / "b", quiet=True, resume=True)
    assert [r["best_epoch"] for r in resumed] == [r["best_epoch"] for r in straight]
    assert 1 in [r["best_epoch"] for r in straight]  # a tie to keep (at 1e-5 the weights barely move)


def test_a_sweep_and_a_run_never_share_a_workdir(tmp_path):
    # each would overwrite the other's metrics.jsonl and mix checkpoints
    from fsnn.train.loop import train_and_evaluate

    jax.config.update("jax_enable_x64", True)
    config = dataclasses.replace(BASE, epochs=1)
    train_and_evaluate(config, tmp_path / "run", quiet=True, figures=False)
    sweep([config], tmp_path / "sweep", quiet=True)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"}
    for resume in (False, True):
        with pytest.raises(ConfigError, match="holds a run of `fsnn train`, not a sweep"):
            sweep([config], tmp_path / "run", quiet=True, resume=resume)
        with pytest.raises(ConfigError, match="holds a sweep .*, not a run"):
            train_and_evaluate(config, tmp_path / "sweep", resume=resume, quiet=True, figures=False)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_a_swept_run_is_evaluated_and_plotted_like_a_trained_one(tmp_path):
    # `fsnn eval/plot WORKDIR --run I`: the run's own state, metrics and (with --best) best weights
    jax.config.update("jax_enable_x64", True)
    grid = {"hidden": [(12,), (6,)], "select_best": [True, False]}  # two programs of four runs
    configs = expand_grid(dataclasses.replace(BASE, epochs=3), 2, grid)
    rows, states = sweep(configs, tmp_path, quiet=True)
    for i in (1, 6):  # second of group 0; third of group 1
        config, _, state = restore_run(tmp_path, run=i)
        assert config == configs[i]
        for mine, swept in zip(jax.tree.leaves(state), jax.tree.leaves(states[i])):
            np.testing.assert_array_equal(np.asarray(mine), np.asarray(swept))
        again = evaluate_run(tmp_path, run=i)
        assert again["epoch"] == 3
        assert again["test_accuracy"] == pytest.approx(rows[i]["final_test_accuracy"], abs=1e-12)
        assert again["validation_accuracy"] == pytest.approx(rows[i]["val_accuracy"], abs=1e-12)
        metrics = sweep_run_metrics(tmp_path, i)
        assert [m["epoch"] for m in metrics] == [1, 2, 3]
        assert metrics[-1]["val_accuracy"] == pytest.approx(rows[i]["val_accuracy"], abs=1e-12)
        assert metrics[-1]["val_loss"] == pytest.approx(again["validation_loss"], rel=1e-9)
    best = evaluate_run(tmp_path, run=1, best=True)
    assert best["epoch"] == rows[1]["best_epoch"]
    assert best["test_accuracy"] == pytest.approx(rows[1]["test_accuracy"], abs=1e-12)
    with pytest.raises(FileNotFoundError, match="select_best=false"):
        evaluate_run(tmp_path, run=6, best=True)
    for run, said in ((None, r"sweep\.json\)\.$"), (8, "; got 8.")):  # (no "got None")
        with pytest.raises(ConfigError, match=f"holds a sweep of 8 runs: choose one with --run.*{said}"):
            evaluate_run(tmp_path, run=run)
    assert main(["plot", str(tmp_path), "--run", "6"]) == 0
    assert (tmp_path / "run-6" / "figures" / "training_curves.png").is_file()


def test_an_interrupted_sweep_keeps_its_epochs_and_resumes_exactly(tmp_path, monkeypatch, after_busy_device):
    # Ctrl-C (or SIGTERM under the command line) in epoch 3, no periodic checkpoints: the two
    # epochs done are saved at once (no device computation, which would wait for the running
    # epoch: here one that lasts seconds), and --resume ends exactly where an uninterrupted sweep does.
    from fsnn.train import sweep as sweep_module

    jax.config.update("jax_enable_x64", True)
    configs = expand_grid(dataclasses.replace(BASE, epochs=4, checkpoint_every=0, select_best=True), 2, {})
    straight_rows, straight = sweep(configs, quiet=True)
    logged = []

    def interrupt_in_epoch_3(summary, n, real=sweep_module._epoch_row):
        logged.append(1)  # called once per epoch, for its metrics line
        if len(logged) == 3:
            busy.append(after_busy_device(np.zeros((), np.float32)))
            raise KeyboardInterrupt
        return real(summary, n)

    busy = []
    monkeypatch.setattr(sweep_module, "_epoch_row", interrupt_in_epoch_3)
    with pytest.raises(checkpoint.Interrupted, match="^epochs 1-2 are checkpointed: the same command with --resume"):
        sweep(configs, tmp_path, quiet=True)
    assert not busy[0].is_ready(), "saving the interrupted sweep waited for a computation"
    monkeypatch.undo()
    assert checkpoint.latest_epoch(tmp_path / "checkpoints" / "group-0") == 2
    rows, resumed = sweep(configs, tmp_path, quiet=True, resume=True)
    for a, b in zip(straight, resumed):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert [(r["test_accuracy"], r["best_epoch"]) for r in rows] == [
        (r["test_accuracy"], r["best_epoch"]) for r in straight_rows
    ]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4]


def test_an_interrupted_sweep_says_which_group_it_kept_where():
    """(The command line said "the epochs done are checkpointed" whatever the sweep had done.)"""
    from fsnn.train.sweep import _saved

    assert _saved(0, 1, 0) == "no epoch had ended: the same command with --resume continues."
    assert _saved(0, 3, 4) == "epochs 1-4 of group 1/3 are checkpointed: the same command with --resume continues."
    assert (
        _saved(1, 3, 0) == "no epoch of group 2/3 had ended, group 1 is done: the same command with --resume continues."
    )
    assert _saved(2, 3, 7).startswith("epochs 1-7 of group 3/3 are checkpointed, groups 1-2 are done: ")


def test_sweep_writes_report_and_table(tmp_path, capsys):
    argv = [
        "sweep",
        "yinyang",
        "--seeds",
        "2",
        "--set",
        "xi=0.2,0.4",
        "--set",
        "train_size=300",
        "--set",
        "eval_size=100",
        "--epochs",
        "1",
        "--workdir",
        str(tmp_path / "sw"),
        "--quiet",
    ]
    assert main(argv) == 0
    report = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [r["config"]["seed"] for r in report["runs"]] == [0, 1, 0, 1]
    assert [r["config"]["xi"] for r in report["runs"]] == [0.2, 0.2, 0.4, 0.4]
    assert len(report["summary"]) == 2 and all(s["seeds"] == 2 for s in report["summary"])
    lines = (tmp_path / "sw" / "metrics.jsonl").read_text().splitlines()
    assert len(json.loads(lines[0])["val_accuracy"]) == 4
    # the float32 runs' accuracies are exact fractions of the split sizes (0.3, not 0.29999998211860657)
    reported = [(a, 300) for a in json.loads(lines[0])["train_accuracy"]]
    reported += [(r[k], 100) for r in report["runs"] for k in ("test_accuracy", "final_test_accuracy", "val_accuracy")]
    assert all(accuracy == round(accuracy * size) / size for accuracy, size in reported), reported
    out = capsys.readouterr().out
    assert "xi=0.4" in out and "4 runs" in out
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err  # never overwritten
    assert main([*argv, "--resume"]) == 0  # nothing left to train: the same table again
    assert capsys.readouterr().out.splitlines()[:3] == out.splitlines()[:3]


def test_a_grid_value_alone_is_one_value():
    """("mse" was swept as "m", "s", "e"; 0.2 was a TypeError; "0.2" the values 0, ".", 2.)"""
    for value in ("mse", 0.2, "0.2"):
        key = "loss" if value == "mse" else "xi"
        configs = expand_grid(BASE, 2, {key: value})
        assert [getattr(c, key) for c in configs] == [0.2 if key == "xi" else value] * 2
    assert [c.hidden for c in expand_grid(BASE, 1, {"hidden": [(10,), (20,)]})] == [(10,), (20,)]
    ragged = [(), ("threshold",), ("tau_m", "threshold")]  # lists of values of different lengths
    assert [c.trainable_neuron for c in expand_grid(BASE, 1, {"trainable_neuron": ragged})] == ragged
    assert [c.xi for c in expand_grid(BASE, 1, {"xi": np.array([0.1, 0.3])})] == [0.1, 0.3]
    assert [c.xi for c in expand_grid(BASE, 1, {"xi": np.float64(0.3)})] == [0.3]


@pytest.mark.parametrize(
    ("grid", "said"),
    [
        ({"xi": ["0.2", 0.4, 0.2]}, "--set lists the setting xi=0.2 twice"),  # (its runs trained, counted twice)
        ({"hidden": [(10,), [10]]}, r"--set lists the setting hidden=\(10,\) twice"),
        ({"max_dw_norm": [None, 1.0, None]}, "--set lists the setting max_dw_norm=None twice"),
        ({"xi": [0.2, 0.2], "alpha": [0.1, 0.2]}, "--set lists the setting xi=0.2, alpha=0.1 twice"),
    ],
)
def test_a_value_listed_twice_is_refused(grid, said):
    with pytest.raises(ConfigError, match=said):
        expand_grid(BASE, 2, grid)


def test_a_value_that_fits_only_beside_another_keys_is_swept():
    per_layer = {"hidden": [(20, 20)], "init": [((1.5, 0.8),) * 3], "max_missing": [(0.3, 0.3, 0.0)]}
    assert [c.hidden for c in expand_grid(BASE, 1, per_layer)] == [(20, 20)]


def test_the_table_names_settings_as_set_takes_them():
    rows = [
        {"config": {"hidden": [20], "init": [[1.5, 0.8], [0.5, 0.8]], "loss": "mse", "seed": s}, "test_accuracy": 0.5}
        for s in (0, 1)
    ]
    rows = [{**r, "spikes_per_neuron": [1.0, 0.5]} for r in rows]
    line = format_summary(summarize(rows)).splitlines()[1]  # (JSON's lists: hidden=[20])
    assert line.startswith("hidden=(20,), init=((1.5, 0.8), (0.5, 0.8)), loss=mse     2 ")


def test_select_best_in_a_sweep_reports_the_best_validation_epoch():
    config = dataclasses.replace(BASE, dtype="float32", epochs=3, select_best=True)
    rows, _ = sweep(expand_grid(config, 2, {}), quiet=True)
    for row in rows:
        assert 1 <= row["best_epoch"] <= 3
        assert row["best_val_accuracy"] >= row["val_accuracy"]
    assert summarize(rows)[0]["seeds"] == 2


def test_progress_in_a_log_names_each_program(capsys):
    """Several programs (groups) train one after the other: each line says which and how many runs."""
    configs = expand_grid(dataclasses.replace(BASE, epochs=1, dtype="float32"), 2, {"hidden": [(4,), (6,)]})
    sweep(configs[:3])
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": ")[0] for line in lines] == ["group 1/2, 2 runs", "group 2/2, 1 run"]
    assert all(re.search(r": epoch 1/1, mean val \d\.\d{3} \(\d+\.\d s\)$", line) for line in lines)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "seed=1,2"], "--seeds"),
        (["--set", "learning_rate=0.1,-1"], "learning_rate"),
        (["--set", "no_such_key=1,2"], "unknown config key"),
        (["--seeds", "0"], "--seeds"),
        (["--devices", "-1"], "--devices must be 0 (all) or 1.."),
        (["--set", "xi=0.2", "--set", "xi=0.3"], "--set xi is given 2 times; list its values once"),
        (["--epochs", "3", "--set", "epochs=1,2"], "--epochs and --set epochs= both give `epochs`; give it once"),
        (["--set", "xi="], "--set xi= lists no values"),
        (["--seed", str(2**31 - 2), "--seeds", "3"], "reaches seed 2147483648, past the largest, 2**31 - 1; start at"),
    ],
)
def test_sweep_errors_name_the_problem(argv, message, capsys):
    assert main(["sweep", "yinyang", "--quiet", *argv]) == 2
    assert message in capsys.readouterr().err
