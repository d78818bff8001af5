"""Hypergradient descent versus grid search with the same budget, on Yin-Yang.

Two hyperparameters of the published Yin-Yang configuration, the learning rate and the softmax
temperature xi of the TTFS loss, are tuned for one objective: the validation loss (at the published
xi = 0.2) after STEPS training steps from the initial weights (three epochs at batch 150, the
trainer's own steps and data order). The descent takes ITERATIONS Adam steps in log space on the
exact hypergradient (`fsnn.train.hypergrad.tune`: `jax.grad` through the unrolled training) from
the middle of the grid; the grid search evaluates as many points (`grid_search`, all in one vmapped
program). Budget: 16 trainings each; the wall time of both is reported. With ``--confirm-seeds N``
both winners are then trained for the full 300 epochs with N seeds (one `fsnn.train.sweep` program).

Command:  python experiments/yinyang_hypergrad.py --workdir runs/yinyang_hypergrad --confirm-seeds 3
Result:   BENCHMARKS.md ("Hyperparameter studies").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from fsnn.train import Config, ConfigError

STEPS = 100
ITERATIONS = 15  # + the starting point = 16 hypergradient evaluations
META_LR = 0.25
START = {"learning_rate": 0.0055, "xi": 0.2}  # the grid's geometric middle
GRID = {"learning_rate": (0.001, 0.003, 0.01, 0.03), "xi": (0.05, 0.1, 0.3, 0.8)}


def get_config() -> Config:
    return Config(name="yinyang_hypergrad")


def get_smoke_config() -> Config:
    """A few-second version for tests."""
    return dataclasses.replace(get_config(), train_size=300, eval_size=200, hidden=(20,), epochs=2, checkpoint_every=0)


def run(workdir: str | Path, *, smoke: bool = False, confirm_seeds: int = 0) -> dict:
    """Run the study; write and return ``study.json``."""
    from fsnn.train.hypergrad import grid_search, tune, with_hyper
    from fsnn.train.loop import Trainer, load_data
    from fsnn.train.sweep import expand_grid, summarize, sweep

    if not str(workdir) or not isinstance(confirm_seeds, int) or confirm_seeds < 0:
        raise ConfigError(
            f"`workdir` must name a folder and `confirm_seeds` be >= 0; got {workdir!r}, {confirm_seeds!r}."
        )
    if confirm_seeds and (Path(workdir) / "confirm").exists():  # found now, not after the study's minutes
        raise ConfigError(f"{Path(workdir) / 'confirm'} already holds a confirmation sweep; choose a new --workdir.")
    config = get_smoke_config() if smoke else get_config()
    steps, iterations = (4, 2) if smoke else (STEPS, ITERATIONS)
    grid = {k: v[: 2 if smoke else None] for k, v in GRID.items()}
    trainer = Trainer(config)
    data = load_data(config)
    start = with_hyper(trainer.hp, START)
    names = list(START)

    t0 = time.perf_counter()
    train, val = data["train"], data["validation"]
    descent = tune(trainer, names, train, val, steps=steps, iterations=iterations, meta_lr=META_LR, hp=start)
    descent_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    points = grid_search(trainer, grid, train, val, steps=steps)
    grid_seconds = time.perf_counter() - t0

    best = {"descent": min(descent, key=lambda r: r["loss"]), "grid": min(points, key=lambda r: r["loss"])}
    report = {
        "objective": f"validation loss (xi = {config.xi}) after {steps} training steps",
        "descent": {"rows": descent, "seconds": descent_seconds, "evaluations": len(descent)},
        "grid": {"rows": points, "seconds": grid_seconds, "evaluations": len(points)},
        "best": best,
    }
    if confirm_seeds:
        base = dataclasses.replace(config, name="yinyang_hypergrad_confirm")
        configs = [
            c
            for method in ("descent", "grid")
            for c in expand_grid(dataclasses.replace(base, **{n: best[method][n] for n in names}), confirm_seeds, {})
        ]
        rows, _ = sweep(configs, Path(workdir) / "confirm", base=base, quiet=True)
        report["confirm"] = summarize(rows)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    (Path(workdir) / "study.json").write_text(json.dumps(report, indent=2))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/yinyang_hypergrad")
    parser.add_argument("--smoke", action="store_true", help="a few-second version")
    parser.add_argument("--confirm-seeds", type=int, default=0, help="train both winners fully with this many seeds")
    args = parser.parse_args()
    try:
        report = run(args.workdir, smoke=args.smoke, confirm_seeds=args.confirm_seeds)
    except ConfigError as err:
        parser.error(str(err))
    for method in ("descent", "grid"):
        part, best = report[method], report["best"][method]
        print(
            f"{method:8s}: {part['evaluations']} evaluations in {part['seconds']:.1f} s; best loss {best['loss']:.4f} "
            f"at learning_rate={best['learning_rate']:.4g}, xi={best['xi']:.4g}"
        )
    for row in report.get("confirm", []):
        mean, std = 100 * row["test_accuracy_mean"], 100 * row["test_accuracy_std"]
        print(f"full training {row['setting']}: {mean:.2f} ± {std:.2f} % test accuracy")


if __name__ == "__main__":
    main()
