"""Fashion-MNIST 28 x 28: a dense single-spike network (first version: the MNIST settings).

784 - 350 - 10 with the published MNIST optimiser, noise and remedies (`experiments/mnist.py`), on
Fashion-MNIST (same 50 000 / 10 000 / 10 000 split and encoding). Not yet tuned: see BENCHMARKS.md
for what has been measured.

Command:  fsnn train fashion_mnist --data-dir ../shared/data
"""

import dataclasses

from fsnn.train import Config, load_config


def get_config() -> Config:
    return dataclasses.replace(load_config("mnist"), name="fashion_mnist", dataset="fashion_mnist")


def get_smoke_config() -> Config:
    return dataclasses.replace(get_config(), epochs=1, train_size=2000, eval_size=1000, checkpoint_every=0)
