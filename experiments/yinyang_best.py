"""Yin-Yang, our best single-spike setting so far.

The published network (`yinyang.py`: 4+1 - 120+1 - 3, Adam, batch 150, 300 epochs, init
N(1.5, 0.8) / N(0.5, 0.8), bias spike 0.9, alpha 0.005, weight bumping, gradient drop) with:

- a membrane twice as slow as the synapse, tau_m = 2 tau_s, and g_leak = 0.5 so that C = 1 (the
  paper's convention for this ratio); the exact closed form is the quadratic solver;
- learning rate 0.01 instead of 0.005, decaying twice as often (x 0.95 every 10 epochs);
- a sharper softmax, xi = 0.1 instead of 0.2 (learning rate and xi from the grid of
  `yinyang_hypergrad.py`, confirmed by full 10-seed sweeps).

The reported test accuracy is that of the final weights. Still at most one spike per neuron.

Command:  fsnn train yinyang_best --workdir runs/yinyang_best
          fsnn sweep yinyang_best --seeds 10        (the 10-seed table)
Result:   see BENCHMARKS.md (mean over seeds; tried alternatives are listed there too).
"""

import dataclasses

from fsnn.train import Config


def get_config() -> Config:
    return Config(name="yinyang_best", tau_m=2.0, g_leak=0.5, lr_step=10, learning_rate=0.01, xi=0.1)


def get_smoke_config() -> Config:
    return dataclasses.replace(get_config(), epochs=8, train_size=600, eval_size=300, checkpoint_every=0)
