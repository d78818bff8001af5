"""Data-parallel training over two (emulated CPU) devices gives the one-device result."""

import json
import os
import subprocess
import sys

SCRIPT = r"""
import dataclasses, json, sys
import jax
import numpy as np
from fsnn.train import Config
from fsnn.train.loop import Trainer, load_data

assert len(jax.devices()) == 2, jax.devices()
out = {}
for devices in (1, 2):
    config = Config(hidden=(16,), train_size=300, eval_size=150, batch_size=60, dtype="float64", devices=devices)
    jax.config.update("jax_enable_x64", True)
    trainer = Trainer(config)
    x, y = trainer.place(load_data(config)["train"])
    state, summary = trainer.train_epoch(trainer.place(trainer.init_state()), x, y)
    kernels = [np.asarray(state.params["layers"][i]["kernel"]) for i in range(2)]
    out[devices] = {
        "kernels": [k.tolist() for k in kernels],
        "bumps": np.asarray(summary["bumps"]).tolist(),
        "accuracy": float(summary["train_accuracy"]),
        "placed_on": len(state.params["layers"][0]["kernel"].sharding.device_set),
    }
json.dump(out, sys.stdout)
"""


def test_two_devices_match_one():
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    one, two = out["1"], out["2"]
    assert one["placed_on"] == 1 and two["placed_on"] == 2
    assert one["bumps"] == two["bumps"] and one["accuracy"] == two["accuracy"]
    for a, b in zip(one["kernels"], two["kernels"]):
        diff = max(abs(u - v) for ra, rb in zip(a, b) for u, v in zip(ra, rb))
        assert diff < 1e-9, diff  # float64; only the order of the cross-device sums differs
