"""fsnn.train: the compiled epoch, run directory, checkpoints and exact resume."""

import dataclasses
import json
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from fsnn import xla
from fsnn.plot import read_metrics
from fsnn.train import Config, ConfigError, apply_overrides, checkpoint, load_config
from fsnn.train.loop import NEURON_FLOOR, Trainer, evaluate_run, hyperparameters, load_data, train_and_evaluate
from fsnn.train.sweep import sweep

TINY = Config(hidden=(16,), train_size=300, eval_size=150, epochs=2, batch_size=64, checkpoint_every=1)


def test_smoke_training_beats_chance(tmp_path):
    """The README's default job in miniature: Yin-Yang must clearly beat chance (1/3)."""
    config = load_config("yinyang", smoke=True)
    results = train_and_evaluate(config, tmp_path / "run", quiet=True)
    assert results["test_accuracy"] >= 0.6
    for name in ("config.json", "metrics.jsonl", "results.json"):
        assert (tmp_path / "run" / name).is_file()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, config.epochs + 1))
    for key in (
        "train_loss",
        "train_accuracy",
        "val_accuracy",
        "train_silent_fraction",
        "bumps",
        "dropped_columns",
        "seconds",
    ):
        assert key in rows[0]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    for key in (
        "test_accuracy",
        "val_accuracy",
        "best_val_accuracy",
        "epochs",
        "train_seconds",
        "train_samples_per_second",
        "seed",
    ):
        assert key in saved
    assert saved["best_val_accuracy"] == max(r["val_accuracy"] for r in rows)
    # accuracies are the exact fractions of the split sizes: 0.959, not float32's 0.95899999 (nor a
    # compiled division's 0.9590000000000001)
    n = {split: len(labels) for split, (_, labels) in load_data(config).items()}
    again = evaluate_run(tmp_path / "run")
    reported = [(r["train_accuracy"], n["train"]) for r in rows] + [(r["val_accuracy"], n["validation"]) for r in rows]
    reported += [(saved[k], n["test"]) for k in ("test_accuracy", "final_test_accuracy")]
    reported += [(again["validation_accuracy"], n["validation"]), (again["test_accuracy"], n["test"])]
    assert all(accuracy == round(accuracy * size) / size for accuracy, size in reported), reported


def test_progress_in_a_log_file_is_a_line_now_and_then(tmp_path, capsys):
    """stderr captured (as in a batch job's log): the first and the last epoch, no bar's carriage returns."""
    train_and_evaluate(dataclasses.replace(TINY, epochs=3), tmp_path / "run", figures=False)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == ["epoch 1/3", "epoch 3/3"]
    assert re.fullmatch(r"epoch 3/3, loss \d\.\d{3}, train \d\.\d{3}, val \d\.\d{3} \(\d+\.\d s\)", lines[-1])


def test_epoch_compiles_once():
    trainer = Trainer(TINY)
    data = load_data(TINY)
    state = trainer.init_state()
    state, _ = trainer.train_epoch(state, *data["train"])
    state, metrics = trainer.train_epoch(state, *data["train"])
    assert trainer.jit_train_epoch._cache_size() == 1
    assert int(state.epoch) == 2
    assert np.isfinite(float(metrics["train_loss"]))


def test_a_split_that_does_not_fit_the_network_is_one_clear_error():
    """Each trained or evaluated silently before: fewer labels than inputs, labels of no output neuron
    (accuracy 0), one label per row of a column (accuracy 19.5)."""
    trainer = Trainer(TINY)
    x, y = load_data(TINY)["train"]
    state = trainer.init_state()
    cases = {
        "labels must be integers of shape \\(300,\\), one per input; got int32 \\(290,\\)": (x, y[:290]),
        "labels must be integers .*; got int32 \\(300, 1\\)": (x, y[:, None]),
        "labels must be integers .*; got float32 \\(300,\\)": (x, y.astype(np.float32)),
        "1 labels outside 0..2": (x, y.at[7].set(3)),
        "2 labels outside 0..2": (x, y.at[:2].set(-1)),
        "input spike times must be floats of shape \\(N, 4\\); got float32 \\(300, 5\\)": (np.c_[x, x[:, :1]], y),
        "input spike times .*; got int32 \\(300, 4\\)": (x.astype(np.int32), y),
        "no samples": (x[:0], y[:0]),
    }
    for message, split in cases.items():
        for run, first in ((trainer.train_epoch, state), (trainer.evaluate, state.params)):
            with pytest.raises(ValueError, match=f"^`x, y`: {message} \\(dataset 'yinyang'\\).$"):
                run(first, *split)
    state, _ = trainer.train_epoch(state, x, y)  # the same split unchanged trains
    assert int(state.epoch) == 1


def test_a_batch_larger_than_the_training_set_is_the_whole_set():
    """No padding to `batch_size`: the step sees the 300 samples (and their noise) as batch_size=300 does."""
    noisy = dataclasses.replace(TINY, input_noise=0.1)
    data = load_data(noisy)

    def kernel(batch_size):
        trainer = Trainer(dataclasses.replace(noisy, batch_size=batch_size))
        state, metrics = trainer.train_epoch(trainer.init_state(), *data["train"])
        return np.asarray(state.params["layers"][0]["kernel"]), float(metrics["train_loss"])

    exact, loss = kernel(300)
    for huge in (10**9, 10**20):
        np.testing.assert_array_equal(kernel(huge)[0], exact)
    assert np.isfinite(loss)


def test_the_largest_seeds_train_and_a_never_reached_lr_step_is_fine():
    config = apply_overrides(TINY, {"seed": str(2**31 - 1), "substrate_seed": str(-(2**31)), "lr_step": str(10**20)})
    hp = hyperparameters(config)
    assert (int(hp["seed"]), int(hp["substrate"]["seed"]), int(hp["lr_step"])) == (2**31 - 1, -(2**31), 2**31 - 1)
    trainer = Trainer(config)
    state, metrics = trainer.train_epoch(trainer.init_state(), *load_data(config)["train"])
    assert np.isfinite(float(metrics["train_loss"])) and metrics["learning_rate"] == np.float32(config.learning_rate)


def test_same_seed_same_result_and_exact_resume(tmp_path):
    straight = train_and_evaluate(dataclasses.replace(TINY, epochs=3), tmp_path / "a", quiet=True)
    train_and_evaluate(dataclasses.replace(TINY, epochs=1), tmp_path / "b", quiet=True)
    saved = json.loads((tmp_path / "b" / "config.json").read_text())
    del saved["select_best"]  # a run written before this key existed resumes with its default
    (tmp_path / "b" / "config.json").write_text(json.dumps(saved))
    with (tmp_path / "b" / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 2, "train_lo')  # the process was killed while it wrote epoch 2's row
    assert [row["epoch"] for row in read_metrics(tmp_path / "b")] == [1]
    resumed = train_and_evaluate(dataclasses.replace(TINY, epochs=3), tmp_path / "b", resume=True, quiet=True)
    like = Trainer(TINY).init_state()
    a = checkpoint.restore_latest(tmp_path / "a" / "checkpoints", like)
    b = checkpoint.restore_latest(tmp_path / "b" / "checkpoints", like)
    assert int(a.epoch) == int(b.epoch) == 3
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert straight["test_accuracy"] == resumed["test_accuracy"]
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    files = {f: f.read_bytes() for f in (tmp_path / "b").glob("*.json*")}
    with pytest.raises(ConfigError, match="checkpointed at epoch 3, past `epochs` \\(2\\); give --epochs 3"):
        train_and_evaluate(dataclasses.replace(TINY, epochs=2), tmp_path / "b", resume=True, quiet=True)
    assert {f: f.read_bytes() for f in files} == files  # (it wrote epochs=2 into config.json and results.json)
    assert evaluate_run(tmp_path / "b")["test_accuracy"] == pytest.approx(resumed["test_accuracy"])
    # the whole run's training time and speed (they counted the last call's epochs only)
    seconds = sum(row["seconds"] for row in read_metrics(tmp_path / "b"))
    assert resumed["train_seconds"] >= seconds
    assert resumed["train_samples_per_second"] == pytest.approx(3 * 300 / resumed["train_seconds"])
    again = train_and_evaluate(dataclasses.replace(TINY, epochs=3), tmp_path / "b", resume=True, quiet=True)
    assert again["train_seconds"] == pytest.approx(seconds, rel=1e-3)  # nothing left to train (it said 8e-6 s)


def test_an_interrupt_while_resume_rewrites_the_log_loses_no_row(tmp_path, monkeypatch):
    """The log was rewritten in place: Ctrl-C (or a kill) in the middle left it truncated."""
    run = tmp_path / "run"
    train_and_evaluate(TINY, run, quiet=True)
    before = (run / "metrics.jsonl").read_bytes()
    write_text = pathlib.Path.write_text

    def interrupted_halfway(path, data, *args, **kwargs):
        if path.name.startswith("metrics.jsonl"):
            write_text(path, data[: len(data) // 2], *args, **kwargs)
            raise KeyboardInterrupt
        return write_text(path, data, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", interrupted_halfway)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(dataclasses.replace(TINY, epochs=3), run, resume=True, quiet=True)
    assert (run / "metrics.jsonl").read_bytes() == before
    assert json.loads((run / "config.json").read_text())["epochs"] == 3  # (written whole, before the log)
    assert not list(run.glob("*.tmp"))
    monkeypatch.undo()
    train_and_evaluate(dataclasses.replace(TINY, epochs=3), run, resume=True, quiet=True)
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2, 3]


@pytest.mark.parametrize("line", ['{"epoch": 1, "train_lo', "[1, 2]"])
def test_a_log_line_changed_by_hand_is_named_with_its_fix(tmp_path, line):
    run = tmp_path / "run"
    train_and_evaluate(dataclasses.replace(TINY, epochs=3), run, quiet=True)
    rows = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([line, *rows[1:]]) + "\n")  # (was a JSONDecodeError or KeyError)
    before = {f: f.read_bytes() for f in run.glob("*.json*")}
    for read in (
        lambda: read_metrics(run),
        lambda: train_and_evaluate(dataclasses.replace(TINY, epochs=4), run, resume=True, quiet=True),
    ):
        with pytest.raises(checkpoint.CheckpointError, match=f"^line 1 of {run / 'metrics.jsonl'} is not a row that"):
            read()
    assert {f: f.read_bytes() for f in before} == before
    (run / "metrics.jsonl").write_text("\n".join(rows[1:]) + "\n")  # the fix the error names
    assert [row["epoch"] for row in read_metrics(run)] == [2, 3]


def test_a_damaged_checkpoint_is_named_with_its_fix_and_nothing_is_lost(tmp_path):
    run = tmp_path / "run"
    straight = train_and_evaluate(dataclasses.replace(TINY, epochs=3), tmp_path / "straight", quiet=True)
    train_and_evaluate(TINY, run, quiet=True)  # checkpoints of epochs 1 and 2
    before = {name: (run / name).read_bytes() for name in ("config.json", "metrics.jsonl", "results.json")}
    data_file = max((run / "checkpoints" / "2").rglob("d/*"), key=lambda f: f.stat().st_size)
    damaged = bytearray(data_file.read_bytes())
    damaged[len(damaged) // 2] ^= 1  # one bit: orbax itself might read a wrong weight without noticing
    data_file.write_bytes(damaged)
    with pytest.raises(checkpoint.CheckpointError) as err:
        train_and_evaluate(dataclasses.replace(TINY, epochs=3), run, resume=True, quiet=True)
    assert (
        f"the checkpoint of epoch 2 in {run / 'checkpoints'} is damaged (1 file(s) differ from when it was saved, "
        f"e.g. {data_file.relative_to(run / 'checkpoints' / '2')}); delete {run / 'checkpoints' / '2'} to go on "
        "from the checkpoint before it (epoch 1)."
    ) == str(err.value)
    assert {name: (run / name).read_bytes() for name in before} == before
    shutil.rmtree(run / "checkpoints" / "2")  # the fix the error names
    resumed = train_and_evaluate(dataclasses.replace(TINY, epochs=3), run, resume=True, quiet=True)
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_a_checkpoint_removed_by_a_run_in_progress_while_read_is_not_called_damaged(tmp_path, monkeypatch):
    """`fsnn eval` of a live run: the run saves two epochs while the reader checks the latest one, and
    the second save removes it. That read used to fail as "damaged", telling the user to delete a step."""
    directory = tmp_path / "checkpoints"

    def state(epoch):
        return (jax.numpy.asarray(epoch, "int32"), jax.numpy.full((8, 8), float(epoch)))

    for epoch in (1, 2):
        checkpoint.save(directory, state(epoch), step=epoch)
    digest, saves, saving = checkpoint._digest, [3, 4], []

    def a_live_run_saves_meanwhile(folder):
        if not saving:  # the reader's check (not the saves' own digests): two epochs end meanwhile
            saving.append(True)
            for epoch in saves[:2]:
                checkpoint.save(directory, state(epoch), step=epoch)
            del saves[:2], saving[:]
        return digest(folder)

    monkeypatch.setattr(checkpoint, "_digest", a_live_run_saves_meanwhile)
    epoch, weights = checkpoint.restore_latest(directory, state(0))
    assert int(epoch) == 4 and float(weights[0, 0]) == 4.0  # the newer one, read whole
    assert sorted(p.name for p in directory.iterdir()) == ["3", "4"]

    saves.extend(range(5, 5 + 2 * 20))  # a run saving faster than anything can be read
    with pytest.raises(checkpoint.CheckpointError, match="changed while being read, 20 times in a row"):
        checkpoint.restore_latest(directory, state(0))


@pytest.mark.parametrize("edit", ["{", '{"nosuch": 1}', '{"tau_m": -1.0}'])
def test_a_saved_config_changed_by_hand_is_named(tmp_path, edit):
    run, sweep_dir = tmp_path / "run", tmp_path / "sweep"
    train_and_evaluate(dataclasses.replace(TINY, epochs=1), run, quiet=True)
    sweep([dataclasses.replace(TINY, epochs=1)], sweep_dir, quiet=True)
    for saved in (run / "config.json", sweep_dir / "configs.json"):
        saved.write_text(edit if saved.name == "config.json" else f"[{edit}]")
        message = re.escape(f"{saved} no longer reads back as fsnn wrote it (")
        with pytest.raises(ConfigError, match=message):
            evaluate_run(saved.parent, run=None if saved.name == "config.json" else 0)
        with pytest.raises(ConfigError, match=message):  # resuming: before anything is written
            if saved.name == "config.json":
                train_and_evaluate(dataclasses.replace(TINY, epochs=2), run, resume=True, quiet=True)
            else:
                sweep([dataclasses.replace(TINY, epochs=2)], sweep_dir, resume=True, quiet=True)
        assert saved.read_text() == (edit if saved.name == "config.json" else f"[{edit}]")


def test_a_checkpoint_of_another_network_is_not_called_damaged(tmp_path, capfd):
    """config.json's `hidden` changed by hand: the intact checkpoint was called damaged, with the advice to
    delete it (and its trained weights), and orbax's threads printed a traceback at exit."""
    run = tmp_path / "run"
    train_and_evaluate(TINY, run, quiet=True)
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**saved, "hidden": [20]}))
    before = {f: f.read_bytes() for f in run.rglob("*") if f.is_file() and f.name != ".lock"}
    fits = r"the checkpoint of epoch 2 in .* does not fit the run's config \(params/layers/0/kernel: \(5, 16\) saved"
    for read in (
        lambda: evaluate_run(run),
        lambda: train_and_evaluate(dataclasses.replace(TINY, hidden=(20,)), run, resume=True, quiet=True),
    ):
        with pytest.raises(checkpoint.CheckpointError, match=fits + r", \(5, 20\) now\): .*put that config back"):
            read()
    assert {f: f.read_bytes() for f in before} == before
    assert "Traceback" not in capfd.readouterr().err
    (run / "config.json").write_text(json.dumps(saved))  # the fix the error names
    assert evaluate_run(run)["epoch"] == 2


def test_a_checkpoint_whose_digest_file_is_damaged_is_named(tmp_path):
    directory = tmp_path / "checkpoints"
    state = (jax.numpy.asarray(1, "int32"), jax.numpy.ones(3))
    checkpoint.save(directory, state, step=1)
    (directory / "1" / "fsnn_sha256.json").write_text('{"d/abc": ')
    with pytest.raises(checkpoint.CheckpointError, match="epoch 1 .* is damaged \\(its fsnn_sha256.json does not"):
        checkpoint.restore_latest(directory, state)


def test_a_damaged_checkpoint_of_older_fsnn_is_named_with_its_fix(tmp_path):
    """Without the digest (checkpoints of older versions) orbax finds the damage."""
    run = tmp_path / "run"
    train_and_evaluate(dataclasses.replace(TINY, epochs=1), run, quiet=True)
    folder = run / "checkpoints" / "1"
    (folder / "fsnn_sha256.json").unlink()
    for data_file in folder.rglob("d/*"):
        data_file.write_bytes(data_file.read_bytes()[:20])
    done = subprocess.run(
        [sys.executable, "-m", "fsnn.cli", "eval", str(run)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    # orbax's reading threads still print their failures around the message (even on its line)
    start = f"fsnn: error: the checkpoint of epoch 1 in {run / 'checkpoints'} is damaged (OUT_OF_RANGE"
    end = f"); no checkpoint before it is left: delete {run / 'checkpoints'} and train again (without --resume)."
    assert re.search(re.escape(start) + "[^\n]*" + re.escape(end), done.stderr), done.stderr[:3000]


def test_workdir_is_never_overwritten(tmp_path):
    train_and_evaluate(dataclasses.replace(TINY, epochs=1), tmp_path, quiet=True)
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="already holds a run"):
        train_and_evaluate(dataclasses.replace(TINY, epochs=1), tmp_path, quiet=True)
    with pytest.raises(ValueError, match="different config"):
        train_and_evaluate(dataclasses.replace(TINY, epochs=2, learning_rate=0.1), tmp_path, resume=True, quiet=True)
    assert (tmp_path / "metrics.jsonl").read_text() == before


def test_a_workdir_that_cannot_be_a_folder_is_one_clear_error(tmp_path):
    from fsnn.train.sweep import sweep

    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("mine")
    with pytest.raises(ValueError, match="cannot use `workdir` .*notes.txt \\(File exists\\); choose another"):
        train_and_evaluate(dataclasses.replace(TINY, epochs=1), not_a_folder, quiet=True)
    with pytest.raises(ValueError, match="cannot use `workdir`"):
        sweep([dataclasses.replace(TINY, epochs=1)], not_a_folder / "sweep", quiet=True)
    assert not_a_folder.read_text() == "mine"


def test_a_workdir_in_use_is_refused_until_its_process_ends(tmp_path):
    # The same command started twice: the second must fail at once, before it writes anything,
    # not write over the running first's config, metrics and checkpoints.
    (tmp_path / "metrics.jsonl").write_text("the first run's\n")
    hold = "\n".join(
        [
            "import pathlib, sys, time",
            "from fsnn.locks import exclusive",
            "with exclusive(pathlib.Path(sys.argv[1])):",
            "    print('held', flush=True)",
            "    time.sleep(600)",
        ]
    )
    with subprocess.Popen(
        [sys.executable, "-c", hold, str(tmp_path / ".lock")], stdout=subprocess.PIPE, text=True
    ) as first:
        try:
            assert first.stdout.readline().strip() == "held"
            for second in (lambda: train_and_evaluate(TINY, tmp_path, quiet=True), lambda: sweep([TINY], tmp_path)):
                with pytest.raises(ConfigError, match=rf"in use by another fsnn process \(pid {first.pid}\)"):
                    second()
            assert (tmp_path / "metrics.jsonl").read_text() == "the first run's\n"
            assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "metrics.jsonl"]
        finally:
            first.kill()  # the claim ends with the process, however it ends
    assert train_and_evaluate(dataclasses.replace(TINY, epochs=1), tmp_path, quiet=True, figures=False)["epochs"] == 1


def test_in_a_multi_host_run_the_first_process_claims_the_workdir(tmp_path, monkeypatch):
    # Every host's process trains into the same (shared) folder: only process 0 may hold it.
    from fsnn.train.loop import claim_workdir

    with claim_workdir(tmp_path):
        monkeypatch.setattr(jax, "process_index", lambda: 1)
        with claim_workdir(tmp_path):  # the other hosts go on
            pass
        monkeypatch.setattr(jax, "process_index", lambda: 0)
        with pytest.raises(ConfigError, match="in use"):  # a second run of the first host does not
            with claim_workdir(tmp_path):
                pass


def test_remedies_are_reported():
    # Low initial weights silence the hidden layer: bumping must kick in and be counted.
    config = dataclasses.replace(TINY, init=((0.0, 0.1), (0.5, 0.8)), max_missing=(0.3, 0.0), epochs=1)
    trainer = Trainer(config)
    data = load_data(config)
    state, metrics = trainer.train_epoch(trainer.init_state(), *data["train"])
    assert int(metrics["bumps"][0]) > 0
    off = apply_overrides(config, {"weight_bumping": "False", "max_dw_norm": "None"})
    trainer = Trainer(off)
    _, metrics = trainer.train_epoch(trainer.init_state(), *data["train"])
    assert int(np.sum(metrics["bumps"])) == 0 and int(metrics["dropped_columns"]) == 0


def test_learned_neuron_parameters_step_with_their_own_learning_rate_scale():
    """`neuron_lr_scale` scales the step of the learned thresholds only: 0 freezes them, 1/2 halves
    their step; the weights step as with the learning rate alone."""
    config = dataclasses.replace(
        TINY, trainable_neuron=("threshold",), per_neuron=True, weight_bumping=False, dtype="float64"
    )
    x, y = load_data(config)["train"]
    batch = (x[:64], y[:64], np.ones(64, bool), jax.random.key(0))

    def one_step(scale):
        trainer = Trainer(dataclasses.replace(config, neuron_lr_scale=scale))
        state = trainer.init_state()
        new, _ = xla.jit(trainer._train_step)(state, batch, trainer.hp)
        return jax.tree.map(lambda a, b: np.asarray(a - b), new.params, state.params)

    full, half, frozen = one_step(1.0), one_step(0.5), one_step(0.0)
    for layer in range(2):
        step = full["layers"][layer]["neuron_learned"]["threshold"]
        assert np.all(np.isfinite(step)) and np.any(step != 0)
        np.testing.assert_allclose(half["layers"][layer]["neuron_learned"]["threshold"], step / 2, rtol=1e-12)
        assert not np.any(frozen["layers"][layer]["neuron_learned"]["threshold"])
        for other in (half, frozen):
            np.testing.assert_array_equal(other["layers"][layer]["kernel"], full["layers"][layer]["kernel"])


@pytest.mark.parametrize("learned", [("threshold",), ("tau_m", "tau_s", "threshold")])
def test_learned_neuron_parameters_stay_where_the_model_holds(learned):
    """Steps far larger than the parameters (learning rate 0.5, threshold 0.05 above rest, time
    constants 0.3) would take thresholds below rest and time constants below 0, where spike times
    and gradients are NaN: such steps end at the floor instead, and training goes on finitely."""
    config = dataclasses.replace(
        TINY, trainable_neuron=learned, per_neuron=True, weight_bumping=False, learning_rate=0.5, threshold=0.05
    )
    config = dataclasses.replace(config, tau_m=0.3, tau_s=0.3) if "tau_m" in learned else config
    trainer = Trainer(config)
    train_step = xla.jit(trainer._train_step)
    x, y = load_data(config)["train"]
    state, floored = trainer.init_state(), False
    floors = {"threshold": NEURON_FLOOR * 0.05, "tau_m": NEURON_FLOOR * 0.3, "tau_s": NEURON_FLOOR * 0.3}
    for step in range(3):
        batch = (x[64 * step : 64 * (step + 1)], y[64 * step : 64 * (step + 1)], np.ones(64, bool), jax.random.key(0))
        state, metrics = train_step(state, batch, trainer.hp)
        assert np.isfinite(float(metrics["loss"]))
        for layer in range(2):
            for k, v in state.params["layers"][layer]["neuron_learned"].items():  # e_leak = 0: ϑ is the gap
                v = np.asarray(v)
                assert np.all(np.isfinite(v)) and np.all(v >= floors[k] * (1 - 1e-6)), k
                floored |= bool(np.any(v <= floors[k] * (1 + 1e-6)))
    assert floored  # some step did reach the floor


@pytest.mark.parametrize("learned", [("e_leak",), ("threshold", "e_leak")])
def test_a_learned_rest_stays_below_the_threshold(learned):
    config = dataclasses.replace(TINY, trainable_neuron=learned, per_neuron=True)
    trainer = Trainer(config)
    params = trainer.init_state().params
    rest = params["layers"][0]["neuron_learned"]["e_leak"]
    params["layers"][0]["neuron_learned"]["e_leak"] = rest.at[:2].set(np.array([2.0, -2.0], rest.dtype))  # threshold 1
    kept = {
        k: np.asarray(v) for k, v in trainer._within_model(params, trainer.hp)["layers"][0]["neuron_learned"].items()
    }
    gap = kept.get("threshold", config.threshold) - kept["e_leak"]
    np.testing.assert_allclose(gap[0], 1e-3, rtol=1e-4)  # moved (the learned threshold, else the rest)
    np.testing.assert_allclose(gap[1:], [3.0] + [1.0] * (len(gap) - 2), rtol=1e-6)  # left alone


@pytest.mark.parametrize("augmentation", [{"augment_shift": 2}, {"augment_flip": True}, {"dropout": 0.3}])
def test_image_augmentation_enters_training_reproducibly(augmentation):
    """Translations, mirror images and hidden-spike dropout change what an image epoch trains on;
    the same seed repeats it."""
    config = Config(dataset="mnist16", hidden=(4,), init=((0.2, 0.4), (1.0, 0.8)), max_missing=(0.5, 0.5))
    config = dataclasses.replace(config, batch_size=32, weight_bumping=False)
    rng = np.random.default_rng(0)
    x = jax.numpy.asarray(rng.uniform(0.15, 2.0, (64, 256)), "float32")
    y = jax.numpy.asarray(rng.integers(0, 10, 64))

    def epoch(trainer):
        state, _ = trainer.train_epoch(trainer.init_state(), x, y)
        return np.asarray(state.params["layers"][0]["kernel"])

    augmenting, plain = Trainer(dataclasses.replace(config, **augmentation)), Trainer(config)
    augmented = epoch(augmenting)
    np.testing.assert_array_equal(augmented, epoch(augmenting))
    plain_kernel = epoch(plain)
    initial = np.asarray(plain.init_state().params["layers"][0]["kernel"])
    assert not np.allclose(plain_kernel, initial) and not np.allclose(augmented, plain_kernel)


def test_mnist16_smoke_on_real_images_beats_chance(tmp_path, monkeypatch, mnist_prepared):
    """One epoch on 5000 real 16 x 16 MNIST images (100 steps of 50): at least 3x chance (10 %)."""
    monkeypatch.setenv("TFDS_DATA_DIR", str(mnist_prepared))
    config = load_config("mnist16", smoke=True)
    results = train_and_evaluate(config, tmp_path / "run", quiet=True)
    assert results["test_accuracy"] >= 0.3, results


def test_select_best_reports_the_best_validation_weights(tmp_path):
    config = dataclasses.replace(TINY, epochs=4, select_best=True, checkpoint_every=0)
    results = train_and_evaluate(config, tmp_path / "run", quiet=True, figures=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda r: r["val_accuracy"])  # the first of equal maxima
    assert results["best_epoch"] == best["epoch"] and results["best_val_accuracy"] == best["val_accuracy"]
    again = evaluate_run(tmp_path / "run", best=True)  # `fsnn eval --best`
    assert again["epoch"] == best["epoch"]
    assert again["test_accuracy"] == pytest.approx(results["test_accuracy"])
    assert evaluate_run(tmp_path / "run")["test_accuracy"] == pytest.approx(results["final_test_accuracy"])


def test_loss_sees_output_times_in_units_of_tau_s():
    """xi and beta are multiples of tau_s (Göltz et al. 2021, eq. 8), so slower neurons keep the loss's shape."""
    import jax.numpy as jnp

    from fsnn.losses import mse_spike_time, ttfs_cross_entropy

    times, label = jnp.asarray([8.0, 6.0, jnp.inf], jnp.float32), jnp.asarray(1, jnp.int32)
    for loss in ("ttfs", "mse"):
        config = dataclasses.replace(load_config("yinyang", smoke=True), tau_m=16.0, tau_s=16.0, loss=loss)
        trainer = Trainer(config)
        if loss == "ttfs":
            expected = ttfs_cross_entropy(times / 16.0, label, xi=config.xi, alpha=config.alpha, beta=config.beta)
            in_absolute_time = ttfs_cross_entropy(times, label, xi=config.xi, alpha=config.alpha, beta=config.beta)
        else:
            targets = dict(zip(("t_correct", "t_wrong"), config.mse_targets))
            expected = mse_spike_time(times / 16.0, label, **targets)
            in_absolute_time = mse_spike_time(times, label, **targets)
        got = trainer.loss_fn(times, label, trainer.hp)
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        assert abs(float(in_absolute_time) - float(got)) > 1.0


# A chip for in-the-loop training: varied neurons (root solver), 4-bit weights, jitter, dead neurons.
CHIP = {
    "in_the_loop": True,
    "substrate_variation": 0.1,
    "substrate_weight_bits": 4,
    "substrate_weight_max": (4.0, 2.0),
    "substrate_jitter": 0.02,
    "substrate_dead_fraction": 0.1,
    "in_the_loop_min_slope": 2.0,  # high enough to bind for some spikes (0.5 binds none here)
}


@pytest.mark.parametrize(("max_dw_norm", "chip"), [(1e-3, False), (None, False), (1e-3, True)])
def test_first_order_step_equals_the_per_sample_custom_jvp_step(max_dw_norm, chip):
    """The training step's batch-level backward pass (`fsnn.core.batch_grad`) against the per-sample
    gradients of `layer_spike_times` (on a chip: `spike_times_at`) under `jax.vmap` (what
    hypergradients differentiate): same loss, gradient and dropped count, with the gradient drop
    dropping columns (or off)."""
    config = dataclasses.replace(TINY, max_dw_norm=max_dw_norm, dtype="float64", **(CHIP if chip else {}))
    trainer = Trainer(config)
    x, y = load_data(config)["train"]
    x, y = x[:64], y[:64]
    valid = np.arange(64) < 60  # a padded last batch
    state = trainer.init_state()
    keys = jax.random.split(jax.random.key(3), 64) if chip else None

    def grads(first_order):
        return jax.jit(lambda p: trainer._grads(p, x, y, valid, trainer.hp, keys, first_order))(state.params)

    (loss, _, grad, dropped), (loss_ref, _, grad_ref, dropped_ref) = grads(True), grads(False)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-12)
    assert int(dropped) == int(dropped_ref)
    assert (0 < int(dropped) < 60 * sum(config.sizes)) == (max_dw_norm is not None)  # some columns, not all
    for got, want in zip(jax.tree.leaves(grad), jax.tree.leaves(grad_ref)):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * float(np.max(np.abs(want))))
