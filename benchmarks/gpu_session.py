"""One prepared GPU session: short mnist16 training, the `fsnn bench` table, the Yin-Yang paper run.

Written for the lent device (one H100, 15 minutes of device time per session, starts included):
every check in one command, each section timed and guarded (a failing section is reported and the
next one runs), a short table printed at the end and everything written to ``gpu_session.json``.
TensorFlow Datasets is not installed there, so MNIST comes straight from the original IDX files
(`fsnn.data.images.read_originals`: the same splits as the TFDS path, tested).

Here, once (the originals travel in a git-ignored folder named in the device call's ``carry``)::

    mkdir -p .data && cp -r ../shared/data/mnist .data/ && echo /.data/ >> .git/info/exclude
    python benchmarks/gpu_session.py --data-dir ../shared/data --out /tmp/gpu --smoke   # rehearsal, CPU

On the device (``carry: [".data"]``; jax, flax, optax, orbax, jaxtyping are installed there)::

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_session.py --data-dir .data --out $OUT
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a plain checkout, not installed

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from fsnn.bench import format_table, run_benchmarks  # noqa: E402
from fsnn.data.images import encode_images, read_originals  # noqa: E402
from fsnn.train import load_config  # noqa: E402
from fsnn.train.loop import Trainer, train_and_evaluate  # noqa: E402


def image_epochs(name: str, data_dir: Path, epochs: int, train_size: int | None) -> dict[str, Any]:
    """Train experiment ``name`` (mnist16 or mnist) for ``epochs`` epochs; seconds per epoch, accuracy."""
    config = load_config(name)
    size = 16 if config.dataset.endswith("16") else 28
    splits = read_originals("mnist", data_dir)
    data = {}
    for split, images in splits.items():
        n = train_size if split == "train" and train_size else len(images.labels)
        times = encode_images(images.images[:n], size=size, t_early=config.t_early, t_late=config.t_late)
        data[split] = (jnp.asarray(times, config.dtype), jnp.asarray(images.labels[:n]))
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
        "train_images": int(data["train"][1].shape[0]),
        "batch_size": config.batch_size,
        "epoch_seconds": seconds,  # the first includes compilation
        "test_eval_seconds": time.perf_counter() - start,
        "test_eval_first_seconds": first_eval,
        "train_accuracy_last_epoch": float(summary["train_accuracy"]),
        "test_accuracy": float(test["accuracy"]),
    }


def yinyang_run(epochs: int | None) -> dict[str, Any]:
    """`train_and_evaluate` of the paper's Yin-Yang config; wall seconds include compilation."""
    config = load_config("yinyang")
    if epochs:
        config = dataclasses.replace(config, epochs=epochs)
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        results = train_and_evaluate(config, workdir, quiet=True, figures=False)
        wall = time.perf_counter() - start
    keys = ("test_accuracy", "epochs", "train_seconds", "train_samples_per_second")
    return {"wall_seconds": wall, **{k: results[k] for k in keys}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, type=Path, help="folder holding mnist/ (the IDX originals)")
    parser.add_argument("--out", required=True, type=Path, help="where gpu_session.json goes")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: rehearse the script on a CPU")
    args = parser.parse_args()
    smoke = args.smoke
    device = jax.devices()[0]
    report: dict[str, Any] = {"device": f"{device.platform}: {device.device_kind}", "jax": jax.__version__}
    print(report, flush=True)
    sections = {
        "mnist16": lambda: image_epochs("mnist16", args.data_dir, 1 if smoke else 3, 1000 if smoke else None),
        "bench": lambda: run_benchmarks(
            ("yinyang", "mnist16") if smoke else ("yinyang", "mnist16", "bss2", "mnist"),
            ("float32",) if smoke else ("float32", "float64"),
            large_batch=256 if smoke else 4096,
            inference_batch=512 if smoke else 65536,
            repeats=2 if smoke else 5,
        ),
        "yinyang": lambda: yinyang_run(3 if smoke else None),
        "mnist": lambda: image_epochs("mnist", args.data_dir, 1 if smoke else 2, 500 if smoke else None),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, run in sections.items():
        start = time.perf_counter()
        try:
            report[name] = run()
        except Exception as error:  # report and go on: one device session, every section counts
            traceback.print_exc()
            report[name] = {"error": repr(error)}
        report[name]["section_seconds"] = time.perf_counter() - start
        print(f"== {name} ({report[name]['section_seconds']:.1f} s): {json.dumps(report[name])[:600]}", flush=True)
        (args.out / "gpu_session.json").write_text(json.dumps(report, indent=2))
    if "rows" in report["bench"]:
        print(format_table(report["bench"]))
    for name in ("mnist16", "mnist"):
        r = report[name]
        if "epoch_seconds" in r:
            print(
                f"{name} {r['network']}: epochs {[round(s, 2) for s in r['epoch_seconds']]} s "
                f"(batch {r['batch_size']}, {r['train_images']} images), test {100 * r['test_accuracy']:.2f} %, "
                f"test eval {r['test_eval_seconds']:.3f} s"
            )
    if "wall_seconds" in report["yinyang"]:
        r = report["yinyang"]
        print(f"yinyang {r['epochs']} epochs: {r['wall_seconds']:.1f} s wall, test {100 * r['test_accuracy']:.2f} %")


if __name__ == "__main__":
    main()
