"""Yin-Yang, the published configuration (Göltz et al. 2021, Table / Methods).

4(+1 bias) - 120(+1 bias) - 3, tau_m = tau_s, Adam lr 0.005 with StepLR(20, 0.95), batch 150,
300 epochs, initial weights N(1.5, 0.8) and N(0.5, 0.8), bias spike at 0.9, xi = 0.2,
alpha = 0.005, weight bumping with max_missing (0.3, 0.0), gradient drop at 0.2.

Command:  fsnn train yinyang --workdir runs/yinyang
Result:   see BENCHMARKS.md (test accuracy over 10 seeds and wall time on a 2-core CPU).
"""

import dataclasses

from fsnn.train import Config


def get_config() -> Config:
    return Config(name="yinyang")


def get_smoke_config() -> Config:
    """A few-second version for tests."""
    return dataclasses.replace(get_config(), epochs=8, train_size=600, eval_size=300, checkpoint_every=0)
