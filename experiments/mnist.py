"""MNIST 28 x 28, the published software configuration (Göltz et al. 2021, METHOD.md section 7).

784 - 350 - 10 (no bias spikes), tau_m = tau_s, Adam lr 0.005 with StepLR(15, 0.9), batch 80,
150 epochs, input-time noise sigma 0.3, initial weights N(0.05, 0.8) and N(0.15, 0.8), weight
bumping with max_missing (0.15, 0.05), gradient drop at 0.2. Inputs: t = 0.15 + 1.85 (1 - p/256).
The exact closed form is used at this size too (the reference falls back to an Euler integrator).

Command:  fsnn train mnist --data-dir ../shared/data   (or with FSNN_DATA_DIR set; else TFDS downloads)
Result:   see BENCHMARKS.md.
"""

import dataclasses

from fsnn.train import Config


def get_config() -> Config:
    return Config(
        name="mnist",
        dataset="mnist",
        hidden=(350,),
        init=((0.05, 0.8), (0.15, 0.8)),
        bias_times=(),
        learning_rate=0.005,
        lr_step=15,
        lr_gamma=0.9,
        batch_size=80,
        eval_batch_size=500,
        epochs=150,
        input_noise=0.3,
        max_missing=(0.15, 0.05),
        checkpoint_every=5,
    )


def get_smoke_config() -> Config:
    return dataclasses.replace(get_config(), epochs=1, train_size=2000, eval_size=1000, checkpoint_every=0)
