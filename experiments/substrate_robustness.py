"""Robustness to substrate imperfections on Yin-Yang, like Göltz et al. (2021), Fig. 5.

Three ways to put a network on an imperfect (emulated, `fsnn.substrate`) substrate:

- ``transfer``: train the ideal model, then run its weights on the substrate;
- ``transfer_noise``: the same, trained with input-time noise (sigma = NOISE) for robustness;
- ``in_the_loop``: train with the forward pass on the substrate and the ideal model's exact
  gradients at the substrate's spike times (the paper's hardware-in-the-loop training), the
  membrane slope in them floored as in `yinyang_substrate` (``in_the_loop_min_slope``).

Two scans around a BrainScaleS-2-like point (5 % fixed-pattern variation of tau_m, tau_s and theta,
6-bit weights up to |w| = 6, 0.01 tau_s jitter; `experiments/yinyang_substrate.py`): the variation
from 0 to 20 % at 6 bits, and the weight bits from 3 to 8 at 5 % variation. Every network seed
runs on its own chip (chip seed = network seed); mean ± std over SEEDS seeds, EPOCHS epochs of the
published Yin-Yang settings each. All trainings of a method run as one vmapped `fsnn.train.sweep`.
Also reported at the hardware point: time to decision, spikes per neuron, synaptic events per image.

Command:  python experiments/substrate_robustness.py --workdir runs/substrate_robustness
Result:   BENCHMARKS.md ("Substrate emulation"), docs/figures/substrate_robustness.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

from fsnn.train import Config, ConfigError, load_config

SEEDS = 3
EPOCHS = 150
NOISE = 0.1
VARIATIONS = (0.0, 0.05, 0.10, 0.15, 0.20)
BITS = (3, 4, 5, 6, 7, 8)
METHODS = ("transfer", "transfer_noise", "in_the_loop")


def get_config() -> Config:
    """The hardware point (`yinyang_substrate`), trained for EPOCHS epochs."""
    return dataclasses.replace(load_config("yinyang_substrate"), name="substrate_robustness", epochs=EPOCHS)


def get_smoke_config() -> Config:
    """A few-second version for tests."""
    return dataclasses.replace(load_config("yinyang_substrate", smoke=True), epochs=2, hidden=(20,))


def scan_points(smoke: bool = False) -> list[dict]:
    """The substrate settings of both scans (the shared hardware point once)."""
    variations, bits = (VARIATIONS[1:3], BITS[-1:]) if smoke else (VARIATIONS, BITS)  # smoke: one program
    points = [{"substrate_variation": v, "substrate_weight_bits": 6} for v in variations]
    points += [{"substrate_variation": 0.05, "substrate_weight_bits": b} for b in bits if b != 6]
    return points


def run(workdir: str | Path, *, smoke: bool = False, seeds: int = SEEDS) -> dict:
    """Run the study; write and return ``study.json`` (and ``robustness.png``)."""
    from fsnn.train.loop import Trainer, activity_summary, hyperparameters, load_data
    from fsnn.train.sweep import group_key, sweep

    if not str(workdir) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"`workdir` must name a folder and `seeds` be >= 1; got {workdir!r}, {seeds!r}.")
    workdir = Path(workdir)
    if any((workdir / m).exists() for m in METHODS):  # the sweeps never overwrite (nor resume here)
        raise ConfigError(f"{workdir} already holds this study's sweeps; choose a new --workdir.")
    base = get_smoke_config() if smoke else get_config()
    points = scan_points(smoke)
    hardware = next(p for p in points if p == {"substrate_variation": 0.05, "substrate_weight_bits": 6})
    test = load_data(base)["test"]
    trainers: dict[str, Trainer] = {}

    def on_chip(config: Config, params, point: dict) -> dict:
        """``params`` tested on ``point``'s substrate, on the chip of the config's seed."""
        chip = dataclasses.replace(config, input_noise=0.0, in_the_loop=True, **point)
        trainer = trainers.setdefault(group_key(chip), Trainer(chip))
        return trainer.evaluate(params, *test, hyperparameters(chip), on_substrate=True)

    accuracy: dict[str, list[list[float]]] = {}  # method -> per point, per seed
    activity, seconds = {}, {}
    ideal = dataclasses.replace(base, in_the_loop=False)
    for method, extra in (("transfer", {}), ("transfer_noise", {"input_noise": NOISE})):
        configs = [dataclasses.replace(ideal, seed=s, substrate_seed=s, **extra) for s in range(seeds)]
        t0 = time.perf_counter()
        _, states = sweep(configs, workdir / method, quiet=True)
        seconds[method] = time.perf_counter() - t0
        tested = [[on_chip(c, st.params, p) for c, st in zip(configs, states)] for p in points]
        accuracy[method] = [[float(e["accuracy"]) for e in row] for row in tested]
        activity[method] = activity_summary(tested[points.index(hardware)][0], base.substrate_tau_us)

    configs = [dataclasses.replace(base, seed=s, substrate_seed=s, **p) for p in points for s in range(seeds)]
    t0 = time.perf_counter()
    rows, states = sweep(configs, workdir / "in_the_loop", quiet=True)
    seconds["in_the_loop"] = time.perf_counter() - t0
    accuracy["in_the_loop"] = [
        [r["substrate_test_accuracy"] for r in rows[i : i + seeds]] for i in range(0, len(rows), seeds)
    ]
    first = points.index(hardware) * seeds
    activity["in_the_loop"] = activity_summary(
        on_chip(configs[first], states[first].params, hardware), base.substrate_tau_us
    )

    table = []
    for j, point in enumerate(points):
        row = {"variation": point["substrate_variation"], "weight_bits": point["substrate_weight_bits"]}
        for method in METHODS:
            acc = accuracy[method][j]
            row[method] = {"mean": statistics.fmean(acc), "std": statistics.pstdev(acc), "runs": acc}
        table.append(row)
    report = {
        "base": json.loads(base.to_json()),
        "seeds": seeds,
        "noise": NOISE,
        "table": table,
        "activity_at_hardware_point": activity,
        "train_seconds": seconds,
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "study.json").write_text(json.dumps(report, indent=2))
    plot(report, workdir / "robustness.png")
    return report


def plot(report: dict, path: Path) -> None:
    """Test accuracy against variation (6 bits) and against weight bits (5 % variation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    scans = (
        ("variation", [r for r in report["table"] if r["weight_bits"] == 6], "fixed-pattern variation (%)", 100),
        ("weight_bits", [r for r in report["table"] if r["variation"] == 0.05], "weight bits (5 % variation)", 1),
    )
    for ax, (key, rows, label, scale) in zip(axes, scans):
        rows = sorted(rows, key=lambda r: r[key])
        for method in METHODS:
            xs = [scale * r[key] for r in rows]
            ax.errorbar(
                xs,
                [100 * r[method]["mean"] for r in rows],
                yerr=[100 * r[method]["std"] for r in rows],
                marker="o",
                capsize=3,
                label=method.replace("_", " "),
            )
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy on the substrate (%)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Yin-Yang on an emulated substrate ({report['seeds']} seeds, {report['base']['epochs']} epochs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/substrate_robustness")
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--smoke", action="store_true", help="a few-second version")
    args = parser.parse_args()
    try:
        report = run(args.workdir, smoke=args.smoke, seeds=args.seeds)
    except ConfigError as err:
        parser.error(str(err))
    print(f"{'variation':>9} {'bits':>4} " + " ".join(f"{m:>16}" for m in METHODS))
    for row in report["table"]:
        cells = " ".join(f"{100 * row[m]['mean']:>8.2f} ± {100 * row[m]['std']:<5.2f}" for m in METHODS)
        print(f"{100 * row['variation']:>8.0f}% {row['weight_bits']:>4} {cells}")
    for method, values in report["activity_at_hardware_point"].items():
        print(f"{method}: {values}")
    print(f"training seconds: {report['train_seconds']}")


if __name__ == "__main__":
    main()
