"""Yin-Yang with the neuron parameters learned along with the weights.

The published network (`yinyang.py`) where every neuron also learns its own tau_m, tau_s and
threshold through the exact spike-time gradients (the `root` solver: tau_m and tau_s move apart, so
no closed form holds), at a tenth of the weights' learning rate (`neuron_lr_scale`). At the full
rate the learned time constants drift to the floor and training is unstable (one seed of five
collapsed). Every learned value is kept inside the neuron model (thresholds above rest, positive
time constants; `fsnn.train.loop.NEURON_FLOOR`).

Command:  fsnn train yinyang_learned_neurons --workdir runs/yinyang_learned_neurons
          fsnn sweep yinyang --seeds 5 --set per_neuron=True --set neuron_lr_scale=1,0.1,0.01 \\
              --set "trainable_neuron=('threshold',),('tau_m','tau_s','threshold')"   (the learned rows)
Result:   see BENCHMARKS.md (Sweeps and hyperparameter studies: learned neuron parameters).
"""

import dataclasses

from fsnn.train import Config


def get_config() -> Config:
    return Config(
        name="yinyang_learned_neurons",
        trainable_neuron=("tau_m", "tau_s", "threshold"),
        per_neuron=True,
        neuron_lr_scale=0.1,
    )


def get_smoke_config() -> Config:
    """A few-second version for tests."""
    return dataclasses.replace(get_config(), epochs=4, train_size=300, eval_size=150, checkpoint_every=0)
