"""Fashion-MNIST 28 x 28: a dense single-spike network (the MNIST settings, less input noise).

784 - 350 - 10 with the published MNIST optimiser and remedies (`experiments/mnist.py`), on
Fashion-MNIST (same 50 000 / 10 000 / 10 000 split and encoding), with input-time noise sigma 0.1
instead of 0.3: Fashion-MNIST's grey levels carry the information (a 5-epoch probe: +1.1 % on
16 x 16, +1.8 % validation after 4 epochs on 28 x 28). Not yet tuned further: see BENCHMARKS.md.

Command:  fsnn train fashion_mnist --data-dir ../shared/data
"""

import dataclasses

from fsnn.train import Config, load_config


def get_config() -> Config:
    return dataclasses.replace(load_config("mnist"), name="fashion_mnist", dataset="fashion_mnist", input_noise=0.1)


def get_smoke_config() -> Config:
    return dataclasses.replace(get_config(), epochs=1, train_size=2000, eval_size=1000, checkpoint_every=0)
