"""Yin-Yang, our best single-spike setting so far.

The published network and optimiser (`yinyang.py`: 4+1 - 120+1 - 3, Adam 0.005, batch 150, 300
epochs, init N(1.5, 0.8) / N(0.5, 0.8), bias spike 0.9, xi 0.2, alpha 0.005, weight bumping,
gradient drop) with three changes:

- a membrane twice as slow as the synapse, tau_m = 2 tau_s, and g_leak = 0.5 so that C = 1 (the
  paper's convention for this ratio); the exact closed form is the quadratic solver;
- the learning rate decays twice as often (x 0.95 every 10 epochs instead of 20);
- model selection: the reported test accuracy is that of the weights of the best validation epoch
  (`select_best`; the final weights' accuracy is kept in results.json as `final_test_accuracy`).

Still at most one spike per neuron.

Command:  fsnn train yinyang_best --workdir runs/yinyang_best
Result:   see BENCHMARKS.md (mean over seeds; tried alternatives are listed there too).
"""

import dataclasses

from fsnn.train import Config


def get_config() -> Config:
    return Config(name="yinyang_best", tau_m=2.0, g_leak=0.5, lr_step=10, select_best=True)


def get_smoke_config() -> Config:
    return dataclasses.replace(get_config(), epochs=8, train_size=600, eval_size=300, checkpoint_every=0)
