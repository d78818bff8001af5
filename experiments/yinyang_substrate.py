"""Yin-Yang trained in the loop on an emulated BrainScaleS-2-like substrate (`fsnn.substrate`).

The published Yin-Yang configuration (`experiments/yinyang.py`) with its forward pass on the
substrate: 5 % fixed-pattern variation of tau_m, tau_s and theta per neuron, 6-bit signed weights
(±63 steps up to |w| = 6 in both layers, where trained ideal weights end), 0.01 tau_s of spike-time
jitter (60 ns at tau_s = 6 µs). The backward pass is the ideal model's exact gradient at the
substrate's spike times; results.json reports the substrate's test accuracy (``test_accuracy``),
the same weights on the ideal model (``ideal_test_accuracy``), and latency and activity. The paper
reached 95.0 ± 0.9 % on the chip. ``--set in_the_loop=false`` trains the ideal model instead and
tests it on the substrate (transfer).

The gradient's membrane slope at the chip's spike times is floored at 0.1 (theta - E_l) / tau_s
(``in_the_loop_min_slope``): jitter puts observed spikes past the model membrane's peak, where the
exact implicit-function gradient explodes and the gradient drop discarded ≈ 1000-2400 columns per
epoch. 300 epochs, 3 seeds: 95.5 ± 0.9 % final (96.0 ± 0.4 % best-validation weights) with the
floor, 91.2 ± 1.3 % (94.0 ± 0.7 %) without (BENCHMARKS.md).

Command:  fsnn train yinyang_substrate --workdir runs/yinyang_substrate
Result:   BENCHMARKS.md ("Substrate emulation").
"""

import dataclasses

from fsnn.train import Config

HARDWARE = dict(
    substrate_variation=0.05,
    substrate_weight_bits=6,
    substrate_weight_max=(6.0, 6.0),
    substrate_jitter=0.01,
    substrate_tau_us=6.0,
)


def get_config() -> Config:
    return Config(name="yinyang_substrate", in_the_loop=True, in_the_loop_min_slope=0.1, **HARDWARE)


def get_smoke_config() -> Config:
    """A few-second version for tests."""
    return dataclasses.replace(get_config(), epochs=8, train_size=600, eval_size=300, checkpoint_every=0)
