"""Micro-benchmark of one spiking layer: vmapped, jitted forward and forward+backward.

    python benchmarks/core_layer.py [--batch 1024] [--n-in 256] [--n-out 246] [--dtype float32]

Prints samples/s (median of repeats, after warm-up, synchronised with block_until_ready) and the
cost as n_in doubles. Not a test: numbers go into BENCHMARKS.md with the machine.
"""

from __future__ import annotations

import argparse
import platform

import jax
import jax.numpy as jnp


def _median_seconds(fn, *args, repeats: int = 7) -> float:
    from fsnn.bench import median_seconds

    jax.block_until_ready(fn(*args))  # compile + warm up
    return median_seconds(fn, *args, repeats=repeats)


def bench_layer(batch: int, n_in: int, n_out: int, dtype) -> tuple[float, float]:
    import fsnn
    from fsnn import xla

    key_t, key_w = jax.random.split(jax.random.key(0))
    times = jax.random.uniform(key_t, (batch, n_in), dtype, 0.15, 2.0)
    weights = 0.1 + 0.4 * jax.random.normal(key_w, (n_in, n_out), dtype)
    params = fsnn.LIFParams()

    def layer(t, w):
        return fsnn.layer_spike_times(t, w, params, solver="lambertw")

    forward = xla.jit(jax.vmap(layer, in_axes=(0, None)))

    def loss(w, t):
        out = jax.vmap(layer, in_axes=(0, None))(t, w)
        return jnp.sum(jnp.where(jnp.isfinite(out), out, 0.0))

    backward = xla.jit(jax.value_and_grad(loss))
    return batch / _median_seconds(forward, times, weights), batch / _median_seconds(backward, weights, times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--n-in", type=int, default=256)
    parser.add_argument("--n-out", type=int, default=246)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = parser.parse_args()
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.dtype(args.dtype)
    print(
        f"device: {jax.devices()[0].device_kind} ({platform.processor() or platform.machine()}), jax {jax.__version__}"
    )
    print(f"{'n_in':>6} {'n_out':>6} {'batch':>6} {'forward samples/s':>18} {'fwd+bwd samples/s':>18}")
    for n_in in (args.n_in, 2 * args.n_in):
        fwd, bwd = bench_layer(args.batch, n_in, args.n_out, dtype)
        print(f"{n_in:>6} {args.n_out:>6} {args.batch:>6} {fwd:>18,.0f} {bwd:>18,.0f}")


if __name__ == "__main__":
    main()
