"""What in-the-loop training on the emulated substrate costs, per training epoch.

    python benchmarks/substrate_cost.py [--train-size 5000] [--repeats 3]

For `yinyang_substrate` (5-121-3) and `mnist16_substrate` (256-246-10): the seconds of one
compiled training epoch on ``--train-size`` samples (median over repeats after a warm-up epoch)
for the ideal model, in the loop on a chip with quantised weights and jitter only (its neurons
are exact: the closed-form solver), and in the loop with 5 % fixed-pattern variation (the chip's
neurons differ: `root` solver in its forward pass). Prints a Markdown table with the device.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax

from fsnn.train import load_config
from fsnn.train.loop import Trainer, load_data

SETTINGS = {
    "ideal": {"in_the_loop": False},
    "in the loop, exact chip neurons (6 bits, jitter)": {"substrate_variation": 0.0},
    "in the loop, 5 % variation (6 bits, jitter)": {},
}


def epoch_seconds(config, repeats: int) -> float:
    trainer = Trainer(config)
    x, y = load_data(config)["train"]
    state = trainer.init_state()
    state, _ = trainer.train_epoch(state, x, y)  # compile + warm-up
    jax.block_until_ready(state)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, _ = trainer.train_epoch(state, x, y)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind}; {args.train_size} training samples per epoch")
    print("| config | setting | s per epoch | samples/s | × ideal |")
    print("|---|---|---:|---:|---:|")
    for name in ("yinyang_substrate", "mnist16_substrate"):
        base = dataclasses.replace(load_config(name), train_size=args.train_size, eval_size=100)
        ideal = None
        for label, overrides in SETTINGS.items():
            seconds = epoch_seconds(dataclasses.replace(base, **overrides), args.repeats)
            ideal = ideal or seconds
            rate = args.train_size / seconds
            print(f"| {name} | {label} | {seconds:.3f} | {rate:,.0f} | {seconds / ideal:.1f} |", flush=True)


if __name__ == "__main__":
    main()
