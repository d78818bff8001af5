"""fsnn.cli: the command line trains, evaluates and fails clearly."""

import json
import re
import signal

import pytest

from fsnn.cli import main
from fsnn.train import Config, apply_overrides, load_config


def test_train_and_eval(tmp_path, capsys):
    workdir = tmp_path / "run"
    args = [
        "train",
        "yinyang",
        "--smoke",
        "--quiet",
        "--workdir",
        str(workdir),
        "--epochs",
        "1",
        "--set",
        "hidden=(16,)",
    ]
    before = signal.getsignal(signal.SIGTERM)
    assert main(args) == 0
    assert signal.getsignal(signal.SIGTERM) is before  # the run's SIGTERM handler is the run's only
    assert re.fullmatch(
        r"yinyang: test accuracy 0\.\d{4}, best validation 0\.\d{4}, 1 epoch in \d+\.\d s -> .*\n",
        capsys.readouterr().out,
    )
    assert json.loads((workdir / "config.json").read_text())["hidden"] == [16]
    assert main(["eval", str(workdir)]) == 0
    assert "test_accuracy" in capsys.readouterr().out
    assert main(["eval", str(workdir), "--best"]) == 2  # kept only by runs with select_best
    assert "select_best=true" in capsys.readouterr().err
    assert main(["eval", str(workdir), "--run", "0"]) == 2  # --run is for sweep directories
    assert "holds one run of `fsnn train`, not a sweep: leave out --run" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "yinyang", "--set", "nope=1"], "unknown config key `nope`"),
        (["train", "yinyang", "--set", "tau_m=-1"], "`tau_m` must be > 0"),
        (["train", "yinyang", "--set", "epochs"], "--set expects key=value"),
        (["train", "yinyang", "--set", "xi=0.2", "--set", "xi=0.3"], "--set xi is given more than once"),  # (0.3 won)
        (["train", "yinyang", "--seed", "1", "--set", "seed=2"], "--seed and --set seed= both give `seed`"),  # (1 won)
        (["train", "yinyang", "--epochs", "0"], "`epochs` must be a positive integer"),
        (["train", "missing_experiment"], "experiment `missing_experiment` not found"),
        (["eval", "/nonexistent/run"], "config.json not found"),
        (["bench", "--json", "/nonexistent/b.json"], "--json /nonexistent/b.json: cannot write into /nonexistent;"),
    ],
)
def test_errors_are_one_clear_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("fsnn: error:")


def test_print_config_shows_the_config_the_options_make_and_trains_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "yinyang", "--smoke", "--seed", "3", "--set", "hidden=(30,)", "--print-config"]
    assert main(argv) == 0
    shown = Config.from_dict(json.loads(capsys.readouterr().out))
    assert shown == apply_overrides(load_config("yinyang", smoke=True), {"seed": 3, "hidden": "(30,)"})
    assert not any(tmp_path.iterdir())  # no run directory


@pytest.mark.parametrize(
    "args",
    [
        ["train", "yinyang", "--workdir", ""],
        ["sweep", "yinyang", "--workdir", " "],
        ["train", "mnist", "--data-dir", ""],
        ["eval", ""],
        ["plot", "", "--run", "0"],
        ["bench", "--json", ""],
    ],
)
def test_an_empty_path_is_refused_not_taken_for_the_default(args, tmp_path, capsys, monkeypatch):
    """`--workdir "$UNSET"` must not train into runs/NAME-seedS (nor eval "." or skip the JSON)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert "is empty (an unset shell variable?); give a path" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_missing_image_data_is_one_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "prepared"))
    empty = tmp_path / "data"
    (empty / "mnist").mkdir(parents=True)
    code = main(
        ["train", "mnist16", "--smoke", "--quiet", "--workdir", str(tmp_path / "run"), "--data-dir", str(empty)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("fsnn: error: missing data file") and str(empty / "mnist") in err
    assert len(err.strip().splitlines()) == 1


def test_bench_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    # a network or dtype named twice is measured once (it gave a second row)
    args = [
        "bench",
        "--networks",
        "yinyang,yinyang",
        "--dtypes",
        "float64,float64",
        "--large-batch",
        "32",
        "--steps",
        "1",
    ]
    assert main([*args, "--repeats", "1", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| yinyang | float64 | native |" in table  # the native CPU kernel (tests require it)
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert report["device"] and row["network"] == "yinyang" and row["large_batch"] == 32
    assert row["prefix_search"] == "native"
    for key in ("train_samples_per_s", "train_large_samples_per_s", "inference_images_per_s", "compile_seconds"):
        assert row[key] > 0
    assert main(["bench", "--networks", "resnet"]) == 2  # unknown network: one clear error
    for option in ("--large-batch", "--inference-batch", "--steps", "--repeats"):
        capsys.readouterr()
        assert main(["bench", option, "0"]) == 2
        assert f"fsnn: error: {option} (`" in capsys.readouterr().err


def test_more_devices_than_visible_is_a_clear_error(tmp_path, capsys):
    code = main(["train", "yinyang", "--smoke", "--quiet", "--workdir", str(tmp_path / "r"), "--devices", "64"])
    assert code == 2
    assert "`devices` is 64" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing written


def test_command_line_keeps_compiled_programs_across_processes(tmp_path):
    """`fsnn train` writes its compiled programs to the cache folder; a second process loads them and
    gets the same result (the tests otherwise run with the cache off, `conftest.py`)."""
    import os
    import shutil
    import subprocess
    import sys

    from fsnn.core import cpu_kernel

    cache = tmp_path / "cache"
    if cpu_kernel.available():  # the native kernel comes along: not built again
        cache.mkdir()
        shutil.copy(cpu_kernel.library_path(), cache / cpu_kernel.library_path().name)
    env = {**os.environ, "FSNN_COMPILATION_CACHE": "1", "FSNN_CACHE_DIR": str(cache)}
    env["JAX_DEBUG_LOG_MODULES"] = "jax._src.compiler"  # logs each persistent-cache hit
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    results = []
    for run in ("first", "second"):
        workdir = tmp_path / run
        command = [sys.executable, "-m", "fsnn.cli", "train", "yinyang", "--smoke", "--quiet", "--no-figures"]
        command += ["--epochs", "1", "--set", "hidden=(16,)", "--workdir", str(workdir)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        hits = [line for line in done.stderr.splitlines() if "Persistent compilation cache hit" in line]
        results.append(json.loads((workdir / "results.json").read_text()))
        if run == "first":
            assert not hits and list((cache / "xla").glob("*/*_train_epoch*")), "the epoch program is cached"
        else:
            assert any("_train_epoch" in line for line in hits) and any("_evaluate" in line for line in hits)
    assert results[0]["test_accuracy"] == results[1]["test_accuracy"]
    assert results[0]["test_loss"] == results[1]["test_loss"]


def test_sigterm_keeps_the_epochs_done_and_resume_continues(tmp_path):
    """A scheduler's SIGTERM (as Ctrl-C) mid-run: exit status 130 and one line, the epochs in
    metrics.jsonl are checkpointed (there are no periodic checkpoints here), --resume continues."""
    import signal
    import subprocess
    import sys
    import time

    from fsnn.train import checkpoint

    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "fsnn.cli", "train", "yinyang", "--smoke", "--quiet", "--no-figures"]
    command += ["--set", "hidden=(16,)", "--set", "checkpoint_every=0", "--workdir", str(workdir)]
    metrics = workdir / "metrics.jsonl"
    with subprocess.Popen([*command, "--epochs", "100000"], stderr=subprocess.PIPE, text=True) as run:
        deadline = time.monotonic() + 300
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
            assert run.poll() is None and time.monotonic() < deadline, "the run did not train 3 epochs"
            time.sleep(0.1)
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err[-2000:]
    epochs = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    saved = checkpoint.latest_epoch(workdir / "checkpoints")
    assert saved is not None and epochs[-1] - 1 <= saved <= epochs[-1]  # (a signal between the two writes)
    assert err.strip().splitlines()[-1].startswith(f"fsnn: interrupted; epochs 1-{saved} are checkpointed")
    done = subprocess.run([*command, "--epochs", str(saved + 2), "--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    epochs = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert epochs == list(range(1, saved + 3))


@pytest.mark.parametrize("command", [["eval", "RUN"], ["plot", "RUN"], ["bench", "--networks", "yinyang"]])
def test_ctrl_c_outside_training_is_one_line_not_a_traceback(command, tmp_path, capsys, monkeypatch):
    import fsnn.bench
    import fsnn.plot
    import fsnn.train.loop

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    for module, name in (
        (fsnn.train.loop, "evaluate_run"),
        (fsnn.plot, "save_run_figures"),
        (fsnn.bench, "run_benchmarks"),
    ):
        monkeypatch.setattr(module, name, interrupted)
    assert main([str(tmp_path) if arg == "RUN" else arg for arg in command]) == 130
    assert capsys.readouterr().err == "fsnn: interrupted.\n"


def test_an_interrupt_before_the_first_epoch_ends_says_nothing_is_saved(tmp_path, capsys, monkeypatch):
    from fsnn.train.loop import Trainer

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    workdir = tmp_path / "run"
    argv = ["train", "yinyang", "--smoke", "--quiet", "--no-figures", "--workdir", str(workdir)]
    assert main(argv) == 130
    assert capsys.readouterr().err.strip() == (
        "fsnn: interrupted; no epoch had ended, nothing is checkpointed: the same command starts the run again."
    )
    assert main(["eval", str(workdir)]) == 2
    assert "checkpoints: its run has saved none yet" in capsys.readouterr().err
    assert not (workdir / "checkpoints").exists()
    monkeypatch.undo()  # and so it does
    assert main([*argv, "--epochs", "1"]) == 0


def test_sigterm_during_an_epoch_saves_the_epochs_done_without_waiting_for_it(
    tmp_path, capsys, monkeypatch, after_busy_device
):
    """SIGTERM while the device computes epoch 3 (made to last seconds): epochs 1-2 are checkpointed
    while that computation still runs, not after it (a scheduler's grace may be shorter)."""
    import os
    import threading

    import jax

    from fsnn.train import checkpoint
    from fsnn.train.loop import Trainer

    real, held = Trainer.train_epoch, []

    def third_epoch_slow(self, state, *args):
        third = int(state.epoch) == 2
        state, summary = real(self, state, *args)
        if third:  # the loop's validation of epoch 3 waits for these parameters
            state = state._replace(params=after_busy_device(state.params))
            held.append(state.params)
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
        return state, summary

    monkeypatch.setattr(Trainer, "train_epoch", third_epoch_slow)
    workdir = tmp_path / "run"
    argv = ["train", "yinyang", "--smoke", "--quiet", "--no-figures", "--workdir", str(workdir)]
    assert main([*argv, "--epochs", "5", "--set", "checkpoint_every=0"]) == 130
    still_running = not jax.tree.leaves(held[0])[0].is_ready()
    jax.block_until_ready(held)
    assert still_running, "the interrupt waited for the running epoch"
    assert checkpoint.latest_epoch(workdir / "checkpoints") == 2
    assert capsys.readouterr().err.strip().startswith("fsnn: interrupted; epochs 1-2 are checkpointed")
