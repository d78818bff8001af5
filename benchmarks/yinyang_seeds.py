"""Train an experiment for several seeds, one after another, and print a Markdown table.

    python benchmarks/yinyang_seeds.py [--experiment yinyang] [--seeds 10] [--workdir runs/seeds]

Each run is a full `train_and_evaluate` (compilation included in its seconds).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path

import jax
import numpy as np

from fsnn.train import apply_overrides, load_config
from fsnn.train.loop import train_and_evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="yinyang")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--workdir", default="runs/seeds")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    base = apply_overrides(load_config(args.experiment), dict(s.split("=", 1) for s in args.set))
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        workdir = Path(args.workdir) / f"{base.name}-seed{seed}"
        shutil.rmtree(workdir, ignore_errors=True)
        res = train_and_evaluate(apply_overrides(base, {"seed": seed}), workdir, quiet=True)
        rows.append(res)
        acc, val, sec = res["test_accuracy"], res["val_accuracy"], res["train_seconds"]
        print(f"seed {seed}: test {acc:.4f}  val {val:.4f}  {sec:.1f} s", flush=True)
    acc = np.array([r["test_accuracy"] for r in rows]) * 100
    secs = np.array([r["train_seconds"] for r in rows])
    summary = {
        "experiment": base.name,
        "seeds": [r["seed"] for r in rows],
        "test_accuracy_mean": acc.mean(),
        "test_accuracy_std": acc.std(ddof=1) if len(acc) > 1 else 0.0,
        "test_accuracy_min": acc.min(),
        "test_accuracy_max": acc.max(),
        "seconds_per_run_mean": secs.mean(),
        "machine": f"{platform.machine()} {jax.devices()[0].device_kind}",
    }
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    (Path(args.workdir) / f"{base.name}-summary.json").write_text(json.dumps(summary, indent=2))
    print("| experiment | seeds | test acc. mean ± std (%) | min | max | s per run |")
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| {base.name} | {len(acc)} | {acc.mean():.2f} ± {summary['test_accuracy_std']:.2f} | {acc.min():.2f} | "
        f"{acc.max():.2f} | {secs.mean():.1f} |"
    )


if __name__ == "__main__":
    main()
