"""Yin-Yang, our best single-spike setting so far: the published network with tau_m = 2 tau_s.

Same as `yinyang.py` (4+1 - 120+1 - 3, Adam 0.005, StepLR 20 x 0.95, batch 150, 300 epochs,
init N(1.5, 0.8) / N(0.5, 0.8), bias spike 0.9, xi 0.2, alpha 0.005, weight bumping), but with a
membrane twice as slow as the synapse, tau_m = 2 tau_s, and g_leak = 0.5 so that C = 1 (the
paper's convention for this ratio). The exact closed form is the quadratic solver. Still at most
one spike per neuron.

Command:  fsnn train yinyang_best --workdir runs/yinyang_best
Result:   see BENCHMARKS.md (mean over seeds; tried alternatives are listed there too).
"""

import dataclasses

from fsnn.train import Config


def get_config() -> Config:
    return Config(name="yinyang_best", tau_m=2.0, g_leak=0.5)


def get_smoke_config() -> Config:
    return dataclasses.replace(get_config(), epochs=8, train_size=600, eval_size=300, checkpoint_every=0)
