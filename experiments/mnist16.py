"""16 x 16 MNIST, the published software configuration (Göltz et al. 2021, METHOD.md section 7).

256 - 128 - 10 (no bias spikes), tau_m = tau_s, Adam lr 0.003 with StepLR(10, 0.9), batch 50,
200 epochs, input-time noise sigma 0.3, initial weights N(0.1, 0.4) and N(0.6, 0.8), weight bumping
with max_missing (0.5, 0.5), gradient drop at 0.2. Inputs: centre crop 24, bilinear resize to
16 x 16, background pixels silent (`fsnn.data.encode_images`).

Command:  fsnn train mnist16 --data-dir ../shared/data   (or with FSNN_DATA_DIR set; else TFDS downloads)
Result:   see BENCHMARKS.md.
"""

import dataclasses

from fsnn.train import Config


def get_config() -> Config:
    return Config(
        name="mnist16",
        dataset="mnist16",
        hidden=(128,),
        init=((0.1, 0.4), (0.6, 0.8)),
        bias_times=(),
        learning_rate=0.003,
        lr_step=10,
        lr_gamma=0.9,
        batch_size=50,
        eval_batch_size=500,
        epochs=200,
        input_noise=0.3,
        max_missing=(0.5, 0.5),
        checkpoint_every=10,
    )


def get_smoke_config() -> Config:
    """One short epoch on 5000 real images (a CI test asserts >= 30 %, three times chance)."""
    return dataclasses.replace(get_config(), epochs=1, train_size=5000, eval_size=1000, checkpoint_every=0)
