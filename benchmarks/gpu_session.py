"""One prepared GPU session: whole training runs, the `fsnn bench` table, prefix-search variants.

Written for the lent device (one H100, 15 minutes of device time per session, starts included):
every check in one command, in order of priority, each section (and each benchmark row) timed
and guarded (a failing one is reported and the next runs), sections that would start after
``--budget`` seconds skipped, ``gpu_session.json`` rewritten after each, a short table at the end.
TensorFlow Datasets is not installed there, so MNIST comes straight from the original IDX files
(`fsnn.data.images.read_originals`: the same splits as the TFDS path, tested).

Prefix searches compared (for the kernel decision of issue 5; off CPU the library walks the
sorted inputs ``CHUNK`` at a time, see `fsnn.core.spike_time`): ``chunkN`` with ``CHUNK = N``,
``pallas`` the one-pass Pallas kernel (`fsnn.core.prefix_kernel`), ``dense_highest``
(`dense_mask_layer`, tau_m = tau_s only) no sort at all: every prefix sum as one causal-mask matrix
product. On a CPU (``--smoke``) the variants all take the CPU path: the rehearsal checks the script.

Sections (``--sections a,b``; default all, in this order): ``kernel_tuning`` (bss2 inference
per Triton launch setting; first-layer sort and kernel timed apart); ``full_<experiment>`` (mnist,
mnist_tau16, fashion_mnist, mnist16) and ``yinyang``: whole `fsnn train` runs, results and per-epoch metrics in
the report; ``bench_float32`` (the kernel), ``bench_float64``; ``sweep_yinyang`` (10 seeds of 100
epochs in one `fsnn sweep` vs one after another, issue 6); ``variants``; ``mnist16_<search>``
and ``mnist_<search>``, two training epochs per prefix search; ``bench_float32_chunk64``.

Here, once (the originals travel in a git-ignored folder named in the device call's ``carry``)::

    mkdir -p .data && cp -r ../shared/data/mnist ../shared/data/fashion_mnist .data/
    echo /.data/ >> .git/info/exclude
    python benchmarks/gpu_session.py --data-dir ../shared/data --out /tmp/gpu --smoke   # rehearsal, CPU

On the device (``carry: [".data"]``; jax, flax, optax, orbax, jaxtyping are installed there)::

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_session.py --data-dir .data --out $OUT --budget 420
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a plain checkout, not installed

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from fsnn.bench import bench_network, format_table, median_seconds  # noqa: E402
from fsnn.core import spike_time  # noqa: E402
from fsnn.data.images import encode_images, read_originals  # noqa: E402
from fsnn.nn import SpikingNetwork, batched  # noqa: E402
from fsnn.train import load_config  # noqa: E402
from fsnn.train.loop import Trainer, train_and_evaluate  # noqa: E402


@contextlib.contextmanager
def search(chunk: int | None = None, pallas: bool = False):
    """Off-CPU prefix search with ``CHUNK = chunk`` (default: the library's) or the Pallas kernel."""
    saved = spike_time.CHUNK, spike_time.PALLAS
    spike_time.CHUNK = chunk or saved[0]
    spike_time.PALLAS = pallas
    try:
        yield
    finally:
        spike_time.CHUNK, spike_time.PALLAS = saved


SEARCHES = {"chunk16": {"chunk": 16}, "chunk64": {"chunk": 64}, "chunk256": {"chunk": 256}, "pallas": {"pallas": True}}


def image_epochs(name: str, data_dir: Path, epochs: int, train_size: int | None, variant: str) -> dict[str, Any]:
    """Train experiment ``name`` (mnist16 or mnist) for ``epochs`` epochs; seconds per epoch, accuracy."""
    config = load_config(name)
    size = 16 if config.dataset.endswith("16") else 28
    splits = read_originals("mnist", data_dir)
    data = {}
    for split, images in splits.items():
        n = train_size if split == "train" and train_size else len(images.labels)
        times = encode_images(images.images[:n], size=size, t_early=config.t_early, t_late=config.t_late)
        data[split] = (jnp.asarray(times, config.dtype), jnp.asarray(images.labels[:n]))
    with search(**SEARCHES[variant]):
        trainer = Trainer(config)
        state = trainer.init_state()
        seconds = []
        for _ in range(epochs):
            start = time.perf_counter()
            state, summary = trainer.train_epoch(state, *data["train"])
            jax.block_until_ready(state)
            seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        jax.block_until_ready(trainer.evaluate(state.params, *data["test"]))
        first_eval = time.perf_counter() - start  # compilation included
        start = time.perf_counter()
        test = jax.block_until_ready(trainer.evaluate(state.params, *data["test"]))
    return {
        "network": f"{config.n_inputs}-" + "-".join(map(str, config.sizes)),
        "search": variant,
        "train_images": int(data["train"][1].shape[0]),
        "batch_size": config.batch_size,
        "epoch_seconds": seconds,  # the first includes compilation
        "test_eval_seconds": time.perf_counter() - start,
        "test_eval_first_seconds": first_eval,
        "train_accuracy_last_epoch": float(summary["train_accuracy"]),
        "test_accuracy": float(test["accuracy"]),
    }


def dense_mask_layer(t: jax.Array, w: jax.Array, tau: float, theta_c: float, precision) -> jax.Array:
    """First spike times ``[batch, n_out]`` of a ``tau_m = tau_s = tau`` layer without sorting.

    Prefix ``k`` holds the inputs with ``t_i <= t_k``: ``P_k = sum_i [t_i <= t_k] w_i e^{(t_i-t0)/tau}``
    and ``Q_k`` (the same with a factor ``t_i - t0``) are one matrix product of the causal mask with
    the shared weights; ``B_k = e^{-(t_k-t0)/tau} P_k``, ``D_k = e^{-(t_k-t0)/tau} ((t_k-t0) P_k - Q_k)``
    as in `fsnn.core.spike_time`; the earliest crossing prefix holds the spike. ``t0`` is each
    sample's earliest input (a prototype: overflows if a sample's inputs span more than ≈ 88 tau).
    """
    n = t.shape[1]
    finite = jnp.isfinite(t)
    t0 = jnp.min(jnp.where(finite, t, jnp.inf), axis=1, keepdims=True)
    rel = jnp.where(finite, t - jnp.where(jnp.isfinite(t0), t0, 0.0), 0.0)  # [b, n]
    e = jnp.where(finite, jnp.exp(rel / tau), 0.0)
    mask = (t[:, None, :] <= t[:, :, None]).astype(t.dtype)  # [b, k, i]
    lhs = jnp.concatenate([mask * e[:, None, :], mask * (e * rel)[:, None, :]], axis=1)
    pq = jnp.einsum("bki,ij->bkj", lhs, w, precision=precision)
    p, q = pq[:, :n], pq[:, n:]
    decay = jnp.exp(-rel / tau)[:, :, None]
    big_b, big_d = decay * p, decay * (rel[:, :, None] * p - q)
    later = jnp.where(t[:, None, :] > t[:, :, None], t[:, None, :], jnp.inf)  # [b, k, i]
    span = (jnp.min(later, axis=2) - jnp.where(finite, t, 0.0))[:, :, None]
    peak, u_peak = spike_time._peak("lambertw", big_b, big_d, span, tau, tau)
    crosses = finite[:, :, None] & (big_b > 0) & (u_peak >= theta_c)
    first = jnp.argmin(jnp.where(crosses, t[:, :, None], jnp.inf), axis=1)[:, None, :]  # [b, 1, m]

    def pick(a):
        return jnp.take_along_axis(jnp.broadcast_to(a, crosses.shape), first, axis=1)[:, 0]

    fired = jnp.any(crosses, axis=1)
    b, d = jnp.where(fired, pick(big_b), 1.0), jnp.where(fired, pick(big_d), 0.0)
    x = spike_time._solve_lambertw(b, d, jnp.where(fired, pick(peak), 1.0), tau, tau, theta_c)
    return jnp.where(fired, pick(t[:, :, None]) + x, jnp.inf)


def variants(sizes: tuple[int, ...], batch: int, repeats: int) -> dict[str, Any]:
    """Inference images/s of a 256-input network per prefix search (and the dense mask), f32."""
    net = SpikingNetwork(256, sizes, init=((0.1, 0.4), (0.6, 0.8)), bias_times=(), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(net)
    x = jax.random.uniform(jax.random.key(2), (batch, 256), jnp.float32, 0.15, 2.0)
    x = jnp.where(jax.random.uniform(jax.random.key(3), x.shape) < 0.2, jnp.inf, x)
    kernels = [layer.kernel[...] for layer in net.layers]
    rows: dict[str, Any] = {"network": "256-" + "-".join(map(str, sizes)), "batch": batch}
    reference = None

    def library(s, x):
        return batched(graphdef, s, x)[-1]

    def dense(s, x):
        for w in kernels:
            x = dense_mask_layer(x, w, 1.0, 1.0, "highest")
        return x

    for name in ("chunk64", "chunk16", "chunk256", "pallas", "dense_highest"):
        try:
            with search(**SEARCHES.get(name, {})):
                start = time.perf_counter()
                fn = dense if name.startswith("dense") else library
                # A new function per variant: jit's cache does not see the search settings.
                compiled = jax.jit(lambda s, x, fn=fn: fn(s, x)).lower(state, x).compile()
                compile_s = time.perf_counter() - start
                out = jax.block_until_ready(compiled(state, x))
                seconds = median_seconds(compiled, state, x, repeats=repeats)
            out = np.asarray(out)
            row = {"images_per_s": batch / seconds, "compile_seconds": compile_s}
            if reference is None:
                reference = out
            else:
                both = np.isfinite(out) & np.isfinite(reference)
                row["fired_mismatch"] = int(np.sum(np.isfinite(out) != np.isfinite(reference)))
                row["max_abs_diff"] = float(np.max(np.abs(out - reference), where=both, initial=0.0))
        except Exception as error:  # one variant failing must not cost the others
            traceback.print_exc()
            row = {"error": repr(error)[:400]}
        rows[name] = row
        print(f"   variant {name}: {row}", flush=True)
    return rows


def kernel_tuning(batch: int, repeats: int) -> dict[str, Any]:
    """bss2 inference images/s per Triton launch setting, and where the time goes (sort vs kernel)."""
    from fsnn.core import prefix_kernel

    net = SpikingNetwork(256, (246, 10), init=((0.1, 0.4), (0.6, 0.8)), bias_times=(), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(net)
    x = jax.random.uniform(jax.random.key(2), (batch, 256), jnp.float32, 0.15, 2.0)
    x = jnp.where(jax.random.uniform(jax.random.key(3), x.shape) < 0.2, jnp.inf, x)
    w = net.layers[0].kernel[...]
    rows: dict[str, Any] = {"batch": batch}

    def sort_only(x):  # what the kernel's caller does before it, for the first layer
        order = jnp.argsort(x, axis=1).astype(jnp.int32)
        return jnp.take_along_axis(x, order, axis=1), order

    interpret = jax.default_backend() != "gpu"  # a CPU rehearsal

    def layer_kernel(ts, order):
        def one(t, o):
            return prefix_kernel.causal_prefix_kernel("lambertw", t, o, w, 1.0, 1.0, 1.0, interpret=interpret)

        return jax.vmap(one)(ts, order)

    timings = {}
    for name, fn, args in (("sort_256", sort_only, (x,)), ("kernel_256_246", layer_kernel, sort_only(x))):
        compiled = jax.jit(fn).lower(*args).compile()
        jax.block_until_ready(compiled(*args))
        timings[name] = median_seconds(compiled, *args, repeats=repeats)
    rows["seconds_per_batch"] = timings
    for warps in (None, 2, 4, 8):
        for stages in (1, 2, 3):
            saved = prefix_kernel.NUM_WARPS, prefix_kernel.NUM_STAGES
            prefix_kernel.NUM_WARPS, prefix_kernel.NUM_STAGES = warps, stages
            try:
                compiled = jax.jit(lambda s, x: batched(graphdef, s, x)[-1]).lower(state, x).compile()
                jax.block_until_ready(compiled(state, x))
                rows[f"warps{warps or 'auto'}_stages{stages}"] = batch / median_seconds(
                    compiled, state, x, repeats=repeats
                )
            except Exception as error:
                rows[f"warps{warps or 'auto'}_stages{stages}"] = repr(error)[:200]
            finally:
                prefix_kernel.NUM_WARPS, prefix_kernel.NUM_STAGES = saved
    print(f"   kernel tuning: {rows}", flush=True)
    return rows


def full_run(name: str, data_dir: Path, epochs: int | None) -> dict[str, Any]:
    """`fsnn train NAME` as it runs anywhere (`train_and_evaluate`: validation every epoch, the
    best-validation weights tested), images read from the originals (no TFDS on the device).

    Wall seconds include compilation; the results and every epoch's metrics come back in the report.
    """
    from fsnn.train import loop

    config = load_config(name)
    if epochs:
        config = dataclasses.replace(config, epochs=epochs)
    with tempfile.TemporaryDirectory() as workdir, contextlib.ExitStack() as stack:
        saved = loop.load_images
        loop.load_images = lambda base, data_dir: read_originals(base, data_dir)
        stack.callback(setattr, loop, "load_images", saved)
        start = time.perf_counter()
        results = train_and_evaluate(config, workdir, quiet=True, figures=False, data_dir=data_dir)
        wall = time.perf_counter() - start
        metrics = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    keep = ("epoch", "train_accuracy", "val_accuracy", "seconds", "bumps")
    return {"wall_seconds": wall, "results": results, "metrics": [{k: m.get(k) for k in keep} for m in metrics]}


def seeds_swept_and_one_by_one(seeds: int, epochs: int) -> dict[str, Any]:
    """Issue 6 on the device: ``seeds`` Yin-Yang runs in one `fsnn sweep` vs one after another (wall s)."""
    from fsnn.train.sweep import expand_grid, sweep

    base = dataclasses.replace(load_config("yinyang"), epochs=epochs, checkpoint_every=0)
    configs = expand_grid(base, seeds, {})
    start = time.perf_counter()
    rows, _ = sweep(configs, base=base, quiet=True)
    swept = time.perf_counter() - start
    start = time.perf_counter()
    alone = []
    for config in configs:
        with tempfile.TemporaryDirectory() as workdir:
            alone.append(train_and_evaluate(config, workdir, quiet=True, figures=False)["test_accuracy"])
    one_by_one = time.perf_counter() - start
    return {
        "seeds": seeds,
        "epochs": epochs,
        "swept_seconds": swept,
        "one_by_one_seconds": one_by_one,
        "speedup": one_by_one / swept,
        "swept_test_accuracy": [r["test_accuracy"] for r in rows],
        "alone_test_accuracy": alone,
    }


def bench_rows(networks, dtype: str, smoke: bool, deadline: float, pallas: bool = False) -> dict[str, Any]:
    """`fsnn.bench.bench_network` rows, one at a time (each printed as it completes)."""
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    rows = []
    for name in networks:
        if time.perf_counter() > deadline:
            rows.append({"network": name, "dtype": dtype, "skipped": "budget"})
            continue
        start = time.perf_counter()
        try:
            with search(pallas=pallas):
                row = bench_network(
                    name,
                    dtype,
                    large_batch=256 if smoke else 4096,
                    steps=2 if smoke else 4,
                    repeats=2 if smoke else 5,
                    inference_batch=512 if smoke else 65536,
                )
        except Exception as error:
            traceback.print_exc()
            row = {"network": name, "dtype": dtype, "error": repr(error)[:400]}
        row["row_seconds"] = time.perf_counter() - start
        rows.append(row)
        print(f"   bench {json.dumps(row)}", flush=True)
    return {"rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, type=Path, help="folder holding mnist/ (the IDX originals)")
    parser.add_argument("--out", required=True, type=Path, help="where gpu_session.json goes")
    parser.add_argument("--budget", type=float, default=420.0, help="no section starts after this many seconds")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: rehearse the script on a CPU")
    parser.add_argument("--sections", help="comma-separated sections to run (default: all, in order)")
    args = parser.parse_args()
    smoke = args.smoke
    begin = time.perf_counter()
    deadline = begin + args.budget
    device = jax.devices()[0]
    report: dict[str, Any] = {"device": f"{device.platform}: {device.device_kind}", "jax": jax.__version__}
    print(report, flush=True)
    networks = ("bss2", "mnist16") if smoke else ("bss2", "mnist16", "yinyang", "mnist")
    n16, n28 = (1000, 500) if smoke else (None, None)
    sections: dict[str, Callable[[], dict[str, Any]]] = {
        "kernel_tuning": lambda: kernel_tuning(64 if smoke else 65536, 2 if smoke else 5),
        **{
            f"full_{name}": lambda name=name: full_run(name, args.data_dir, 1 if smoke else None)
            for name in ("mnist", "mnist_tau16", "fashion_mnist", "mnist16")
        },
        "bench_float32": lambda: bench_rows(networks, "float32", smoke, deadline, pallas=True),
        "yinyang": lambda: full_run("yinyang", args.data_dir, 3 if smoke else None),
        "bench_float64": lambda: bench_rows(networks, "float64", smoke, deadline),
        "sweep_yinyang": lambda: seeds_swept_and_one_by_one(2 if smoke else 10, 2 if smoke else 100),
        "variants": lambda: variants((246, 10), 64 if smoke else 16384, 2 if smoke else 5),
        **{
            f"mnist16_{v}": lambda v=v: image_epochs("mnist16", args.data_dir, 1 if smoke else 2, n16, v)
            for v in ("chunk64", "pallas", "chunk16", "chunk256")
        },
        **{
            f"mnist_{v}": lambda v=v: image_epochs("mnist", args.data_dir, 1 if smoke else 2, n28, v)
            for v in ("chunk64", "pallas")
        },
        "bench_float32_chunk64": lambda: bench_rows(networks, "float32", smoke, deadline),
    }
    if args.sections:
        unknown = set(args.sections.split(",")) - set(sections)
        if unknown:
            parser.error(f"--sections: unknown {sorted(unknown)}; known: {', '.join(sections)}")
        sections = {k: v for k, v in sections.items() if k in args.sections.split(",")}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, run in sections.items():
        start = time.perf_counter()
        if start > deadline:
            report[name] = {"skipped": f"budget of {args.budget:.0f} s spent"}
            continue
        try:
            report[name] = run()
        except Exception as error:  # report and go on: one device session, every section counts
            traceback.print_exc()
            report[name] = {"error": repr(error)[:400]}
        report[name]["section_seconds"] = time.perf_counter() - start
        print(f"== {name} ({report[name]['section_seconds']:.1f} s, at {start - begin:.0f} s)", flush=True)
        (args.out / "gpu_session.json").write_text(json.dumps(report, indent=2))
    rows = [
        r for s in ("bench_float32", "bench_float32_pallas", "bench_float64") for r in report.get(s, {}).get("rows", [])
    ]
    done = [r for r in rows if "inference_images_per_s" in r]
    if done:
        date = time.strftime("%Y-%m-%d")
        print(
            format_table(
                {"device": report["device"], "machine": "", "jax": jax.__version__, "date": date, "rows": done}
            )
        )
    for name, r in report.items():
        if isinstance(r, dict) and "epoch_seconds" in r:
            print(
                f"{name} {r['network']}: epochs {[round(s, 2) for s in r['epoch_seconds']]} s "
                f"(batch {r['batch_size']}, {r['train_images']} images), test {100 * r['test_accuracy']:.2f} %, "
                f"test eval {r['test_eval_seconds']:.3f} s"
            )
    for name, r in report.items():
        if isinstance(r, dict) and "results" in r:
            res = r["results"]
            print(
                f"{name}: {res['epochs']} epochs, {r['wall_seconds']:.1f} s wall, "
                f"test {100 * res['test_accuracy']:.2f} % (best validation {100 * res['best_val_accuracy']:.2f} %, "
                f"final-epoch test {100 * res['final_test_accuracy']:.2f} %)"
            )
    r = report.get("sweep_yinyang", {})
    if "speedup" in r:
        print(
            f"yinyang {r['seeds']} seeds x {r['epochs']} epochs: swept {r['swept_seconds']:.1f} s, one by one "
            f"{r['one_by_one_seconds']:.1f} s (x{r['speedup']:.2f})"
        )
    print(f"total {time.perf_counter() - begin:.0f} s")


if __name__ == "__main__":
    main()
