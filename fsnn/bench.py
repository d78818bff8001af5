"""`fsnn bench`: training and inference throughput, compile time and memory of the standard networks.

Synthetic inputs (random spike times) with the real training step of `fsnn.train.loop.Trainer`
(remedies, per-sample gradient drop, Adam) so that the numbers are those of real runs. Every
number is a median over repeats after a warm-up, synchronised with ``block_until_ready``.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["NETWORKS", "run_benchmarks", "format_table", "write_json", "median_seconds", "prefix_search"]

# name: (dataset giving n_inputs / n_classes, hidden sizes, published batch, config overrides)
NETWORKS: dict[str, tuple[str, tuple[int, ...], int, dict[str, Any]]] = {
    "yinyang": ("yinyang", (120,), 150, {}),
    "mnist16": ("mnist16", (128,), 50, {"bias_times": (), "init": ((0.1, 0.4), (0.6, 0.8))}),
    "bss2": ("mnist16", (246,), 50, {"bias_times": (), "init": ((0.1, 0.4), (0.6, 0.8))}),
    "mnist": ("mnist", (350,), 80, {"bias_times": (), "init": ((0.05, 0.8), (0.15, 0.8))}),
}


def prefix_search(dtype: str) -> str:
    """Which causal-prefix search `fsnn.core.spike_time` runs for ``dtype`` on the default device."""
    from fsnn.core import spike_time

    device = jax.devices()[0]
    if device.platform == "cpu":
        if spike_time.native_on_cpu(dtype):
            return "native"
        return "cpu"  # XLA: all prefixes at once up to PARALLEL_MAX_OUT neurons, else one input per step
    cuda = device.platform == "gpu" and "rocm" not in str(getattr(device.client, "platform_version", "")).lower()
    if cuda and spike_time.kernel_on_cuda(dtype):
        return "pallas"
    return f"chunk{spike_time.CHUNK}"


def median_seconds(fn: Callable[..., Any], *args: Any, repeats: int) -> float:
    """Median wall time of ``fn(*args)`` over ``repeats`` synchronised calls (warm it up first)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _inputs(key, n: int, n_in: int, dtype) -> jax.Array:
    """Random input times in [0.15, 2], a fifth of them silent (like background pixels)."""
    k_t, k_s = jax.random.split(key)
    times = jax.random.uniform(k_t, (n, n_in), dtype, 0.15, 2.0)
    return jnp.where(jax.random.uniform(k_s, (n, n_in)) < 0.2, jnp.inf, times)


def bench_network(
    name: str, dtype: str, *, large_batch: int, steps: int, repeats: int, inference_batch: int | None = None
) -> dict[str, Any]:
    """One row: training samples/s (published and large batch), inference images/s (at
    ``inference_batch``, default ``large_batch``), compile s, memory."""
    from fsnn import xla
    from fsnn.train import Config
    from fsnn.train.loop import Trainer

    dataset, hidden, batch, overrides = NETWORKS[name]
    inference_batch = inference_batch or large_batch
    row: dict[str, Any] = {
        "network": name,
        "dtype": dtype,
        "published_batch": batch,
        "large_batch": large_batch,
        "inference_batch": inference_batch,
        "prefix_search": prefix_search(dtype),
    }
    for label, size in (("train", batch), ("train_large", large_batch)):
        config = Config(name=name, dataset=dataset, hidden=hidden, batch_size=size, dtype=dtype, **overrides)
        trainer = Trainer(config)
        state = trainer.init_state()
        n = size * steps
        x = _inputs(jax.random.key(0), n, config.n_inputs, jnp.dtype(dtype))
        y = jax.random.randint(jax.random.key(1), (n,), 0, config.n_classes, jnp.int32)
        start = time.perf_counter()
        compiled = trainer.jit_train_epoch.lower(state, x, y, trainer.hp).compile()
        if label == "train":
            row["compile_seconds"] = time.perf_counter() - start
            memory = compiled.memory_analysis()
            row["train_temp_bytes"] = int(getattr(memory, "temp_size_in_bytes", 0) or 0) if memory else None
        jax.block_until_ready(compiled(state, x, y, trainer.hp))  # warm-up
        row[f"{label}_samples_per_s"] = n / median_seconds(compiled, state, x, y, trainer.hp, repeats=repeats)
    params = state.params  # the network is the same at either batch size
    forward = xla.jit(lambda p, x: trainer.forward_batch(p, x)[-1])
    x = _inputs(jax.random.key(2), inference_batch, config.n_inputs, jnp.dtype(dtype))
    compiled = forward.lower(params, x).compile()
    jax.block_until_ready(compiled(params, x))
    row["inference_images_per_s"] = inference_batch / median_seconds(compiled, params, x, repeats=repeats)
    return row


def run_benchmarks(
    networks: Sequence[str] = tuple(NETWORKS),
    dtypes: Sequence[str] = ("float32", "float64"),
    *,
    large_batch: int = 1024,
    steps: int = 4,
    repeats: int = 5,
    inference_batch: int | None = None,
) -> dict[str, Any]:
    """Benchmark every (network, dtype), each once; returns ``{"device": ..., "rows": [...]}``."""
    from fsnn.train.config import DTYPES, ConfigError

    networks, dtypes = (
        [names] if isinstance(names, str) else list(dict.fromkeys(names)) for names in (networks, dtypes)
    )
    unknown = set(networks) - set(NETWORKS)
    if unknown:
        raise ConfigError(f"--networks: unknown {sorted(unknown)}; known: {', '.join(NETWORKS)}.")
    if set(dtypes) - set(DTYPES):
        raise ConfigError(f"--dtypes: unknown {sorted(set(dtypes) - set(DTYPES))}; known: {', '.join(DTYPES)}.")
    counts = {"large_batch": large_batch, "steps": steps, "repeats": repeats, "inference_batch": inference_batch}
    for key, value in counts.items():
        if value is not None and not (isinstance(value, int) and value >= 1):
            raise ConfigError(f"--{key.replace('_', '-')} (`{key}`) must be a positive integer; got {value}.")
    rows = []
    for dtype in dtypes:
        if dtype == "float64" and not jax.config.jax_enable_x64:
            jax.config.update("jax_enable_x64", True)
        for name in networks:
            rows.append(
                bench_network(
                    name, dtype, large_batch=large_batch, steps=steps, repeats=repeats, inference_batch=inference_batch
                )
            )
    device = jax.devices()[0]
    return {
        "device": f"{device.platform}: {device.device_kind}",
        "machine": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }


def format_table(report: dict[str, Any]) -> str:
    """A Markdown table of `run_benchmarks`'s report."""
    lines = [
        f"device: {report['device']} ({report['machine']}), jax {report['jax']}, {report['date']}",
        "",
        "| network | dtype | prefix search | train samples/s (batch) | train samples/s (large batch) "
        "| inference images/s (batch) | compile s | train temp MB |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        temp = f"{r['train_temp_bytes'] / 2**20:.1f}" if r.get("train_temp_bytes") is not None else "–"
        lines.append(
            f"| {r['network']} | {r['dtype']} | {r.get('prefix_search', '–')} | "
            f"{r['train_samples_per_s']:,.0f} ({r['published_batch']}) | "
            f"{r['train_large_samples_per_s']:,.0f} ({r['large_batch']}) | "
            f"{r['inference_images_per_s']:,.0f} ({r.get('inference_batch', r['large_batch'])}) | "
            f"{r['compile_seconds']:.1f} | {temp} |"
        )
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2))
