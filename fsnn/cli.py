"""Command line: ``fsnn train | sweep | eval | plot | bench``. Thin: parsing and printing only."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

__all__ = ["main", "run"]

DATA_DIR_HELP = (
    "folder with one subfolder of original files per image dataset (mnist/, fashion_mnist/); "
    "default $FSNN_DATA_DIR, else TFDS downloads them"
)


def _parse_sets(items: list[str]) -> dict[str, str]:
    from fsnn.train.config import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value; got {item!r}.")
        if key.strip() in out:  # the last would silently win
            raise ConfigError(f"--set {key.strip()} is given more than once; give it once.")
        out[key.strip()] = value.strip()
    return out


def _train(args) -> int:
    from fsnn.train.config import ConfigError, apply_overrides, load_config

    config = load_config(args.experiment, smoke=args.smoke)
    overrides = _parse_sets(args.set)
    for key in ("seed", "epochs", "devices"):
        if getattr(args, key) is not None:
            if key in overrides:  # one of the two would silently win
                raise ConfigError(f"--{key} and --set {key}= both give `{key}`; give it once.")
            overrides[key] = str(getattr(args, key))
    config = apply_overrides(config, overrides)  # validated here, before anything compiles
    if args.print_config:
        print(config.to_json())
        return 0
    _show_cpu_cores_as_devices(config.devices)  # (data parallelism over a CPU's cores)
    if args.distributed:  # multi-host: one process per host, cluster found from the environment
        import jax

        jax.distributed.initialize()
    workdir = Path(args.workdir or f"runs/{config.name}-seed{config.seed}")

    from fsnn.train.loop import train_and_evaluate

    results = train_and_evaluate(
        config, workdir, resume=args.resume, quiet=args.quiet, data_dir=args.data_dir, figures=not args.no_figures
    )
    sides = ""
    if "substrate_test_accuracy" in results:
        sides = (
            f" (substrate {results['substrate_test_accuracy']:.4f}, ideal model {results['ideal_test_accuracy']:.4f})"
        )
    epochs = f"{results['epochs']} epoch{'s' * (results['epochs'] != 1)}"
    print(
        f"{config.name}: test accuracy {results['test_accuracy']:.4f}{sides}, best validation "
        f"{results['best_val_accuracy']:.4f}, {epochs} in {results['train_seconds']:.1f} s -> {workdir}"
    )
    return 0


def _parse_grid(items: list[str]) -> dict[str, list]:
    """``key=v1,v2,...`` -> ``{key: [v1, v2, ...]}``; values may be Python literals (tuples too)."""
    import ast

    from fsnn.train.config import ConfigError

    keys = [item.partition("=")[0].strip() for item in items]
    for key in keys:
        if keys.count(key) > 1:  # one value list per key (not `_parse_sets`' message: a sweep lists values)
            raise ConfigError(f"--set {key} is given {keys.count(key)} times; list its values once: --set {key}=a,b.")
    grid = {}
    for key, raw in _parse_sets(items).items():
        try:
            values = ast.literal_eval(f"[{raw}]")
        except (ValueError, SyntaxError):  # bare words, e.g. loss=ttfs,mse
            values = [v.strip() for v in raw.split(",")]
        if not values:
            raise ConfigError(f"--set {key}= lists no values; give one or more, comma-separated: --set {key}=a,b.")
        grid[key] = values
    return grid


def _show_cpu_cores_as_devices(n: int) -> None:
    """Let JAX's CPU backend show ``n`` > 1 devices (one per core, so at most this machine's cores), if
    it has not started yet.

    Only the CPU backend reads this; on a GPU machine the GPUs stay the devices. Once JAX has run
    anything (a notebook, a test) the count is fixed and the visible-device check explains.
    """
    import jax

    if 1 < n <= (os.cpu_count() or 1):
        try:
            jax.config.update("jax_num_cpu_devices", n)
        except RuntimeError:
            pass


def _sweep(args) -> int:
    from fsnn.train.config import ConfigError, apply_overrides, load_config
    from fsnn.train.sweep import expand_grid, format_summary, summarize, sweep

    base = load_config(args.experiment, smoke=args.smoke)
    grid = _parse_grid(args.set)
    if args.epochs is not None:
        if "epochs" in grid:  # the listed values would silently win
            raise ConfigError("--epochs and --set epochs= both give `epochs`; give it once.")
        base = apply_overrides(base, {"epochs": args.epochs})
    if args.seed is not None:
        base = apply_overrides(base, {"seed": args.seed})
    configs = expand_grid(base, args.seeds, grid)  # all validated before compiling
    workdir = Path(args.workdir or f"runs/{base.name}-sweep")
    _show_cpu_cores_as_devices(args.devices)
    rows, _ = sweep(
        configs, workdir, base=base, quiet=args.quiet, data_dir=args.data_dir, resume=args.resume, devices=args.devices
    )
    print(format_summary(summarize(rows)))
    seconds = sum({r["group"]: r["group_train_seconds"] for r in rows}.values())
    print(f"{len(rows)} run{'s' * (len(rows) != 1)} in {seconds:.1f} s of training -> {workdir / 'sweep.json'}")
    return 0


def _eval(args) -> int:
    from fsnn.train.loop import evaluate_run

    results = evaluate_run(Path(args.workdir), data_dir=args.data_dir, best=args.best, run=args.run)
    print(json.dumps(results, indent=2))
    return 0


def _plot(args) -> int:
    from fsnn.plot import save_run_figures

    for path in save_run_figures(Path(args.workdir), data_dir=args.data_dir, run=args.run):
        print(path)
    return 0


def _bench(args) -> int:
    from fsnn.bench import format_table, run_benchmarks, write_json
    from fsnn.train.config import ConfigError

    folder = Path(args.json).resolve().parent if args.json else None
    if folder and not (folder.is_dir() and os.access(folder, os.W_OK)):  # found now, not after the benchmarks
        raise ConfigError(f"--json {args.json}: cannot write into {folder}; choose a path in a writable folder.")
    report = run_benchmarks(
        args.networks.split(","),
        args.dtypes.split(","),
        large_batch=args.large_batch,
        steps=args.steps,
        repeats=args.repeats,
        inference_batch=args.inference_batch,
    )
    print(format_table(report))
    if args.json:
        write_json(report, args.json)
    return 0


def _path(text: str) -> str:
    """A path argument, not empty: ``--workdir ""`` would silently mean the default, ``eval ""`` the cwd."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty (an unset shell variable?); give a path")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fsnn", description="Single-spike networks with exact spike-time gradients.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train an experiment config")
    train.add_argument("experiment", help="a config name under experiments/ (e.g. yinyang) or a path to a .py file")
    train.add_argument("--workdir", type=_path, help="where config, metrics, checkpoints and results go")
    train.add_argument("--seed", type=int, help="the run's seed (config key `seed`)")
    train.add_argument("--epochs", type=int, help="epochs to train (config key `epochs`)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    train.add_argument(
        "--print-config", action="store_true", help="print the config these options make (JSON) and exit"
    )
    train.add_argument("--resume", action="store_true", help="continue the run in --workdir from its last checkpoint")
    train.add_argument("--smoke", action="store_true", help="use the experiment's small smoke config")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--data-dir", type=_path, help=DATA_DIR_HELP)
    train.add_argument("--no-figures", action="store_true", help="skip the figures at the end")
    train.add_argument("--devices", type=int, help="data-parallel over this many devices (0 = all visible)")
    train.add_argument(
        "--distributed", action="store_true", help="call jax.distributed.initialize() first (multi-host runs)"
    )
    train.set_defaults(func=_train)
    sw = sub.add_parser("sweep", help="train many seeds and settings at once (vmapped runs)")
    sw.add_argument("experiment", help="a config name under experiments/ or a path to a .py file")
    sw.add_argument("--seeds", type=int, default=1, help="seeds per setting: seed, seed+1, ... (default 1)")
    sw.add_argument("--seed", type=int, help="the first seed (default: the config's)")
    sw.add_argument(
        "--set", action="append", default=[], metavar="KEY=V1,V2,...", help="values of a config key to sweep"
    )
    sw.add_argument("--epochs", type=int)
    sw.add_argument("--workdir", type=_path, help="where configs.json, metrics.jsonl, checkpoints/ and sweep.json go")
    sw.add_argument("--resume", action="store_true", help="continue the sweep in --workdir from its checkpoints")
    sw.add_argument("--smoke", action="store_true", help="use the experiment's small smoke config")
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    sw.add_argument("--data-dir", type=_path, help=DATA_DIR_HELP)
    sw.add_argument(
        "--devices",
        type=int,
        default=0,
        help="spread the runs over this many devices (default 0: all visible; on a CPU, N > 1 shows N cores)",
    )
    sw.set_defaults(func=_sweep)
    ev = sub.add_parser("eval", help="re-evaluate a saved run on its validation and test sets")
    ev.add_argument("workdir", type=_path)
    ev.add_argument("--data-dir", type=_path, help=DATA_DIR_HELP)
    ev.add_argument(
        "--best",
        action="store_true",
        help="the best-validation weights (kept by runs with select_best=true), not the latest checkpoint",
    )
    run_help = "in a sweep directory: which run (the `run` of its row in sweep.json)"
    ev.add_argument("--run", type=int, help=run_help)
    ev.set_defaults(func=_eval)
    plot_help = "draw every standard figure of a run into WORKDIR/figures (of a sweep's run: WORKDIR/run-I/figures)"
    plot = sub.add_parser("plot", help=plot_help)
    plot.add_argument("workdir", type=_path)
    plot.add_argument("--data-dir", type=_path, help=DATA_DIR_HELP)
    plot.add_argument("--run", type=int, help=run_help)
    plot.set_defaults(func=_plot)
    bench = sub.add_parser("bench", help="training / inference throughput, compile time and memory")
    bench.add_argument("--networks", default="yinyang,mnist16,bss2,mnist", help="comma-separated")
    bench.add_argument("--dtypes", default="float32,float64", help="comma-separated")
    bench.add_argument("--large-batch", type=int, default=1024)
    bench.add_argument("--inference-batch", type=int, help="batch of the inference column (default: --large-batch)")
    bench.add_argument("--steps", type=int, default=4, help="training steps per timed call")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--json", type=_path, help="also write the report as JSON to this file")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    from fsnn.data.images import DataError
    from fsnn.train.checkpoint import CheckpointError, Interrupted
    from fsnn.train.config import ConfigError

    args = build_parser().parse_args(argv)
    if args.func is not _bench:  # bench measures compilation itself
        from fsnn.xla import use_compilation_cache

        use_compilation_cache()
    trains = args.func in (_train, _sweep)
    # A scheduler's SIGTERM stops a run as Ctrl-C does: the epochs done are checkpointed.
    on_term = trains and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if on_term else None
    try:
        return args.func(args)
    except (ConfigError, DataError, CheckpointError, FileNotFoundError) as err:  # user-fixable; else a traceback
        print(f"fsnn: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        if not trains:  # eval, plot, bench: nothing to keep, and no traceback
            print("fsnn: interrupted.", file=sys.stderr)
            return 130
        done = "the epochs done are checkpointed: the same command with --resume continues."
        if isinstance(interrupt, Interrupted):  # within its epochs, training knows which
            done = interrupt.saved
        print(f"fsnn: interrupted; {done}", file=sys.stderr)
        return 130
    finally:
        if on_term:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run() -> NoReturn:
    """The `fsnn` command: `main`, then exit with its status. After an interrupted training (130),
    once the epochs done are saved and the message is out, the process ends at once instead of
    waiting for the device to finish the abandoned epoch's computation (minutes for a long epoch)."""
    status = main()
    if status == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    run()
