"""Two (emulated CPU) devices give the one-device result: data-parallel training, sweeps spread over them."""

import json
import os
import subprocess
import sys

SCRIPT = r"""
import dataclasses, json, sys
import jax
import numpy as np
from fsnn.train import Config, ConfigError
from fsnn.train.loop import Trainer, load_data, sharded_search

assert len(jax.devices()) == 2, jax.devices()
out = {}
try:
    Trainer(Config(devices=3))
except ConfigError as err:
    out["three"] = str(err)
for devices in (1, 2):
    config = Config(hidden=(16,), train_size=300, eval_size=150, batch_size=60, dtype="float64", devices=devices)
    jax.config.update("jax_enable_x64", True)
    trainer = Trainer(config)
    x, y = trainer.place(load_data(config)["train"])
    state, summary = trainer.train_epoch(trainer.place(trainer.init_state()), x, y)
    kernels = [np.asarray(state.params["layers"][i]["kernel"]) for i in range(2)]
    with sharded_search(trainer.mesh):
        hlo = trainer.jit_train_epoch.lower(trainer.init_state(), x, y, trainer.hp).as_text()
    out[devices] = {
        "native_search": "fsnn_causal_prefix" in hlo,
        "kernels": [k.tolist() for k in kernels],
        "bumps": np.asarray(summary["bumps"]).tolist(),
        "accuracy": float(summary["train_accuracy"]),
        "placed_on": len(state.params["layers"][0]["kernel"].sharding.device_set),
    }
json.dump(out, sys.stdout)
"""


def _on_two_cpu_devices(script: str) -> dict:
    """Run ``script`` in a fresh process that sees two emulated CPU devices; its JSON output."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_two_devices_match_one():
    out = _on_two_cpu_devices(SCRIPT)
    one, two = out["1"], out["2"]
    assert "`devices` is 3 but only 2 device(s) are visible; set it to at most 2 (0 = all)" in out["three"]
    assert one["placed_on"] == 1 and two["placed_on"] == 2
    # One device: the native CPU kernel; two: the XLA search, which XLA splits over the batch
    # (the kernel's custom call would be gathered onto each device).
    assert one["native_search"] and not two["native_search"]
    assert one["bumps"] == two["bumps"] and one["accuracy"] == two["accuracy"]
    for a, b in zip(one["kernels"], two["kernels"]):
        diff = max(abs(u - v) for ra, rb in zip(a, b) for u, v in zip(ra, rb))
        assert diff < 1e-9, diff  # float64; only the order of the cross-device sums differs


SWEEP_SCRIPT = r"""
import dataclasses, json, sys, tempfile
from pathlib import Path
import jax
import numpy as np
jax.config.update("jax_enable_x64", True)
from fsnn.train.config import Config, ConfigError
from fsnn.train.sweep import _runs_mesh, _spread, expand_grid, sweep

base = Config(train_size=300, eval_size=200, epochs=2, hidden=(12,), batch_size=50, dtype="float64",
              input_noise=0.1, select_best=True)
configs = expand_grid(base, 3, {})  # three seeds: two devices pad a fourth run
spread = _spread(np.arange(3.0), _runs_mesh(2), 3)
out = {"spread": spread.tolist(), "spread_shards": sorted(s.data.shape[0] for s in spread.addressable_shards)}
one_rows, one = sweep(configs, quiet=True, devices=1)
from fsnn.core import cpu_kernel
native = cpu_kernel.causal_prefix_native
traced = []  # the two-device programs trace the native search (each device runs its own runs)
cpu_kernel.causal_prefix_native = lambda *a, **k: traced.append(1) or native(*a, **k)
two_rows, two = sweep(configs, quiet=True, devices=2)
cpu_kernel.causal_prefix_native = native
out["native"] = [cpu_kernel.available(), len(traced)]
with tempfile.TemporaryDirectory() as tmp:  # interrupted on two devices, resumed on one
    sweep([dataclasses.replace(c, epochs=1) for c in configs], Path(tmp), quiet=True, devices=2)
    resumed_rows, resumed = sweep(configs, Path(tmp), quiet=True, devices=1, resume=True)
def diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for s, t in zip(a, b)
               for x, y in zip(jax.tree.leaves(s.params), jax.tree.leaves(t.params)))
keys = ("test_accuracy", "best_epoch", "val_accuracy", "spikes_per_neuron")
out["two_vs_one"] = diff(one, two)
out["resumed_vs_one"] = diff(one, resumed)
out["rows"] = [[[r[k] for k in keys] for r in rows] for rows in (one_rows, two_rows, resumed_rows)]
try:
    sweep(configs, quiet=True, devices=3)
except ConfigError as err:
    out["error"] = str(err)
json.dump(out, sys.stdout)
"""


def test_sweep_spread_over_two_devices_matches_one_and_resumes_on_one():
    out = _on_two_cpu_devices(SWEEP_SCRIPT)
    assert out["spread"] == [0.0, 1.0, 2.0, 2.0] and out["spread_shards"] == [2, 2]  # padded, one half per device
    one, two, resumed = out["rows"]
    assert len(one) == 3 and len({tuple(map(str, r)) for r in one}) == 3  # three different runs
    assert one == two == resumed
    assert out["two_vs_one"] < 1e-12 and out["resumed_vs_one"] < 1e-12
    assert "--devices must be 0 (all) or 1..2" in out["error"]
    available, traced = out["native"]
    assert traced > 0 or not available


def test_train_devices_shows_a_cpus_cores_as_devices(tmp_path):
    """`fsnn train --devices 2` on a CPU trains on two of its cores as devices, as `fsnn sweep --devices 2`
    does (it failed, advising XLA_FLAGS); the run ends as on one device."""
    from fsnn.cli import main
    from fsnn.train.checkpoint import read_jsonl

    command = ["train", "yinyang", "--smoke", "--epochs", "2", "--set", "dtype=float64", "--quiet", "--no-figures"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*command, "--workdir", str(one)]) == 0
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    run = [sys.executable, "-m", "fsnn.cli", *command, "--devices", "2", "--workdir", str(two)]
    done = subprocess.run(run, capture_output=True, text=True, env=env, timeout=600)
    if (os.cpu_count() or 1) < 2:  # a one-core machine has no second core to show
        assert done.returncode == 2 and "`devices` is 2 but only 1 device(s) are visible" in done.stderr
        return
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((two / "config.json").read_text())["devices"] == 2
    for a, b in zip(read_jsonl(one / "metrics.jsonl"), read_jsonl(two / "metrics.jsonl"), strict=True):
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-9 and a["train_accuracy"] == b["train_accuracy"]
