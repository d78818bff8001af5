"""Figures of single-spike networks (matplotlib). Every function returns a `matplotlib.figure.Figure`.

Arrays in, figure out: the functions take spike times, labels, metrics rows or kernels, so they work
in notebooks on anything. `save_run_figures(workdir)` draws the standard set of a run directory
(written by `fsnn train`, which draws all but the Yin-Yang maps itself; also `fsnn plot WORKDIR`).

Example:
    >>> fig = output_time_histograms(np.array([[0.5, 1.0], [np.inf, 0.7]]), np.array([0, 1]))
    >>> len(fig.axes)
    2
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from fsnn.core.neuron import LIFParams

__all__ = [
    "training_curves",
    "silent_fractions",
    "weight_histograms",
    "spike_raster",
    "membrane_traces",
    "output_time_histograms",
    "confusion_matrix",
    "yinyang_maps",
    "save_figures",
    "save_run_figures",
    "read_metrics",
]


def read_metrics(workdir: str | Path) -> list[dict]:
    """The rows of ``workdir/metrics.jsonl`` (one per epoch)."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {workdir} a run directory written by `fsnn train`?")
    from fsnn.train.checkpoint import read_jsonl

    return read_jsonl(path)


def training_curves(metrics: Sequence[dict]) -> Figure:
    """Loss and accuracy (train, validation) against epoch."""
    epochs = [m["epoch"] for m in metrics]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    ax_loss.plot(epochs, [m["train_loss"] for m in metrics], label="train")
    ax_loss.plot(epochs, [m["val_loss"] for m in metrics], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", yscale="log")
    ax_acc.plot(epochs, [100 * m["train_accuracy"] for m in metrics], label="train")
    ax_acc.plot(epochs, [100 * m["val_accuracy"] for m in metrics], label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.legend()
    return fig


def silent_fractions(metrics: Sequence[dict]) -> Figure:
    """Fraction of silent (sample, neuron) pairs per layer on the training set, and bumps, per epoch."""
    epochs = [m["epoch"] for m in metrics]
    n_layers = len(metrics[0]["train_silent_fraction"]) if metrics else 0  # (no rows: empty axes)
    silent = np.array([m["train_silent_fraction"] for m in metrics]).reshape(len(metrics), n_layers)
    bumps = np.array([m["bumps"] for m in metrics]).reshape(len(metrics), n_layers)
    fig, (ax_s, ax_b) = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    for layer in range(n_layers):
        name = "output" if layer == n_layers - 1 else f"hidden {layer + 1}"
        ax_s.plot(epochs, silent[:, layer], label=name)
        ax_b.plot(epochs, bumps[:, layer], label=name)
    ax_s.set(xlabel="epoch", ylabel="silent fraction (train)")
    ax_b.set(xlabel="epoch", ylabel="weight bumps per epoch")
    if n_layers:
        ax_s.legend()
    return fig


def weight_histograms(kernels: Sequence[np.ndarray], bins: int = 50) -> Figure:
    """One histogram of the weights (bias rows included) per layer; non-finite weights (a diverged
    run) are counted in the title, not drawn."""
    shapes = [np.shape(k) for k in kernels]
    if not shapes or any(len(shape) != 2 for shape in shapes):
        raise ValueError(f"`kernels` must be a list of [n_in, n_out] weight arrays, one per layer; got {shapes}.")
    fig, axes = plt.subplots(1, len(kernels), figsize=(3.2 * len(kernels), 3), layout="constrained", squeeze=False)
    for i, (ax, kernel) in enumerate(zip(axes[0], kernels)):
        weights = np.ravel(kernel)
        finite = np.isfinite(weights)
        ax.hist(weights[finite], bins=bins, histtype="stepfilled")
        title = f"layer {i + 1} ({np.shape(kernel)[0]}→{np.shape(kernel)[1]})"
        if not finite.all():
            title += f"\n{np.sum(~finite)} non-finite not shown"
        ax.set(title=title, xlabel="weight")
    axes[0, 0].set_ylabel("count")
    return fig


def spike_raster(
    layer_times: Sequence[np.ndarray],
    input_times: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    samples: Sequence[int] = (0, 1, 2),
) -> Figure:
    """Spikes of every layer for a few samples (one column each); the decision time is marked.

    ``layer_times`` are ``[n_samples, n_neurons]`` per layer (``inf`` = silent); ``input_times`` adds
    the input layer. The decision is the first output spike (dashed line, decided class in red).
    """
    layers = ([np.asarray(input_times)] if input_times is not None else []) + [np.asarray(t) for t in layer_times]
    shapes = [t.shape for t in layers]
    if len(layer_times) == 0 or any(len(shape) != 2 or shape[0] != shapes[0][0] for shape in shapes):
        raise ValueError(
            "`layer_times` (a list, one [n_samples, n_neurons] array per layer) and `input_times` must share "
            f"n_samples; got shapes {shapes}."
        )
    if any(not -shapes[0][0] <= s < shapes[0][0] for s in samples):
        raise ValueError(f"`samples` must index the {shapes[0][0]} samples; got {tuple(samples)}.")
    names = (["input"] if input_times is not None else []) + [
        "output" if i == len(layer_times) - 1 else f"hidden {i + 1}" for i in range(len(layer_times))
    ]
    fig, axes = plt.subplots(
        len(layers), len(samples), figsize=(3.2 * len(samples), 1.6 * len(layers) + 0.6), squeeze=False, sharex="col"
    )
    for col, s in enumerate(samples):
        out = layers[-1][s]
        decision = np.min(out)
        for row, (times, name) in enumerate(zip(layers, names)):
            ax = axes[row, col]
            t = times[s]
            fired = np.isfinite(t)
            ax.scatter(t[fired], np.nonzero(fired)[0], s=6, color="k", marker="|")
            ax.set_ylim(-0.5, len(t) - 0.5)
            if row == len(layers) - 1 and np.isfinite(decision):
                winner = int(np.argmin(out))
                ax.scatter([decision], [winner], s=40, color="tab:red", marker="|")
            if np.isfinite(decision):
                ax.axvline(decision, color="tab:red", linestyle="--", linewidth=0.8)
            if col == 0:
                ax.set_ylabel(name)
        title = f"sample {s}" + (f", label {int(labels[s])}" if labels is not None else "")
        axes[0, col].set_title(title)
        axes[-1, col].set_xlabel("time (τs)")
    fig.tight_layout()
    return fig


def membrane_traces(
    input_times: np.ndarray,
    weights: np.ndarray,
    params: LIFParams | None = None,
    neurons: Sequence[int] = (0,),
    t_max: float | None = None,
    points: int = 600,
) -> Figure:
    """Exact membrane potentials of chosen neurons of a layer for one sample.

    V(t) is the closed-form solution (`fsnn.membrane_potential`) evaluated at ``points`` times, not
    a time-stepped integration; the threshold, the input spikes and each neuron's exact first
    spike time (`fsnn.layer_spike_times`) are marked.
    """
    import jax.numpy as jnp

    from fsnn.core.neuron import LIFParams, membrane_potential
    from fsnn.core.spike_time import layer_spike_times

    params = LIFParams() if params is None else params
    input_times = np.asarray(input_times, np.float64)
    weights = np.asarray(weights, np.float64)
    spikes = np.asarray(layer_spike_times(jnp.asarray(input_times), jnp.asarray(weights), params))
    n = len(spikes)
    if len(neurons) == 0 or any(not -n <= j < n for j in neurons):
        raise ValueError(f"`neurons` must list neurons of the layer, 0 .. {n - 1}; got {tuple(neurons)}.")
    if t_max is not None and not 0 < t_max < np.inf:
        raise ValueError(f"`t_max` must be > 0 and finite, or None (after the last spike); got {t_max}.")
    if points < 2:
        raise ValueError(f"`points` must be >= 2; got {points}.")
    finite = np.concatenate([input_times[np.isfinite(input_times)], spikes[np.isfinite(spikes)]])
    t_max = t_max or (1.5 * float(finite.max()) + 1.0 if finite.size else 5.0)
    grid = np.linspace(0.0, t_max, points)
    fig, ax = plt.subplots(figsize=(6, 3.4), layout="constrained")
    for j in neurons:
        v = np.asarray(
            membrane_potential(jnp.asarray(grid), jnp.asarray(input_times), jnp.asarray(weights[:, j]), params)
        )
        (line,) = ax.plot(grid, v, label=f"neuron {j}")
        if np.isfinite(spikes[j]):
            ax.plot([spikes[j]], [float(params.threshold)], "o", color=line.get_color())
    ax.axhline(float(params.threshold), color="k", linestyle="--", linewidth=0.8, label="threshold")
    for t in input_times[np.isfinite(input_times)]:
        ax.axvline(t, color="0.8", linewidth=0.6, zorder=0)
    ax.set(xlabel="time (τs)", ylabel="membrane potential", xlim=(0, t_max))
    ax.legend(fontsize="small")
    return fig


def _outputs_and_labels(output_times: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``output_times [n, n_classes]`` and integer ``labels [n]`` of those classes, as arrays."""
    output_times, labels = np.asarray(output_times), np.asarray(labels)
    if output_times.ndim != 2 or labels.shape != output_times.shape[:1]:
        raise ValueError(
            f"`output_times` [n, n_classes] and `labels` [n] must fit; got {output_times.shape} and {labels.shape}."
        )
    n = output_times.shape[1]
    if not np.issubdtype(labels.dtype, np.integer) or labels.size and not 0 <= labels.min() <= labels.max() < n:
        span = f" in [{labels.min()}, {labels.max()}]" if labels.size else ""
        raise ValueError(f"`labels` must be integers 0..{n - 1} (the output neurons); got {labels.dtype}{span}.")
    return output_times, labels


def output_time_histograms(output_times: np.ndarray, labels: np.ndarray, bins: int = 40) -> Figure:
    """Per class: spike times of the label neuron vs the other output neurons (finite times only)."""
    output_times, labels = _outputs_and_labels(output_times, labels)
    n_classes = output_times.shape[1]
    cols = min(n_classes, 5)
    rows = -(-n_classes // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 2.4 * rows), layout="constrained", squeeze=False)
    finite = output_times[np.isfinite(output_times)]
    edges = np.linspace(finite.min(), finite.max() + 1e-9, bins + 1) if finite.size else bins
    for c, ax in enumerate(axes.flat):
        if c >= n_classes:
            ax.remove()
            continue
        own = output_times[labels == c, c]
        other = np.delete(output_times[labels == c], c, axis=1).ravel()
        ax.hist(own[np.isfinite(own)], bins=edges, alpha=0.7, histtype="stepfilled", label="label neuron")
        ax.hist(other[np.isfinite(other)], bins=edges, alpha=0.5, histtype="stepfilled", label="other neurons")
        ax.set(title=f"class {c}", xlabel="output spike time (τs)")
    axes.flat[0].legend(fontsize="small")
    return fig


def confusion_matrix(output_times: np.ndarray, labels: np.ndarray) -> Figure:
    """Confusion matrix of first-spike decisions; samples with all outputs silent form a last column."""
    output_times, labels = _outputs_and_labels(output_times, labels)
    n = output_times.shape[1]
    silent = ~np.any(np.isfinite(output_times), axis=1)
    decided = np.where(silent, n, np.argmin(output_times, axis=1))
    counts = np.zeros((n, n + 1), int)
    np.add.at(counts, (labels, decided), 1)
    fig, ax = plt.subplots(figsize=(0.55 * n + 2.5, 0.5 * n + 1.8), layout="constrained")
    image = ax.imshow(counts, cmap="Blues")
    for (i, j), value in np.ndenumerate(counts):
        if value:
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(n + 1), [*map(str, range(n)), "silent"])
    ax.set_yticks(range(n))
    ax.set(xlabel="decision (first output spike)", ylabel="label")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def yinyang_maps(
    output_times_fn: Callable[[np.ndarray], np.ndarray],
    samples: np.ndarray,
    labels: np.ndarray,
    resolution: int = 100,
) -> Figure:
    """Yin-Yang: the data by class, the decision map and each output neuron's spike time over the plane.

    ``output_times_fn`` maps points ``[n, 4]`` = (x, y, 1 - x, 1 - y) to output spike times ``[n, 3]``
    (e.g. a trained network, encoding included). Like Figure 2 of Göltz et al. (2021).
    """
    if resolution < 2:
        raise ValueError(f"`resolution` (grid points per side) must be >= 2; got {resolution}.")
    xs = np.linspace(0.0, 1.0, resolution)
    gx, gy = np.meshgrid(xs, xs)
    grid = np.stack([gx.ravel(), gy.ravel(), 1 - gx.ravel(), 1 - gy.ravel()], axis=1)
    times = np.asarray(output_times_fn(grid))
    n_classes = times.shape[1]
    decision = np.where(np.any(np.isfinite(times), axis=1), np.argmin(times, axis=1), -1).astype(float)
    decision[decision < 0] = np.nan
    samples, labels = np.asarray(samples), np.asarray(labels)
    fig, axes = plt.subplots(1, 2 + n_classes, figsize=(3.1 * (2 + n_classes), 3.2), layout="constrained")
    axes[0].scatter(samples[:, 0], samples[:, 1], c=labels, cmap="viridis", s=4, vmin=0, vmax=n_classes - 1)
    axes[0].set_title("data (by class)")
    axes[1].imshow(
        decision.reshape(gx.shape), origin="lower", extent=(0, 1, 0, 1), cmap="viridis", vmin=0, vmax=n_classes - 1
    )
    axes[1].set_title("decision (first spike)")
    finite = times[np.isfinite(times)]
    vmin, vmax = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    for c in range(n_classes):
        image = axes[2 + c].imshow(
            times[:, c].reshape(gx.shape), origin="lower", extent=(0, 1, 0, 1), cmap="magma", vmin=vmin, vmax=vmax
        )
        axes[2 + c].set_title(f"output {c} spike time")
    fig.colorbar(image, ax=axes[2:], shrink=0.8, label="τs")
    for ax in axes:
        ax.set(xlabel="x", aspect="equal")
    axes[0].set_ylabel("y")
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_figures(
    workdir: str | Path,
    metrics: Sequence[dict],
    kernels: Sequence[np.ndarray],
    inputs: np.ndarray | None = None,
    layer_times: Sequence[np.ndarray] | None = None,
    labels: np.ndarray | None = None,
) -> list[Path]:
    """The standard figures of a run into ``workdir/figures/`` (PNG); returns the paths.

    Training curves, silent fractions and weight histograms; with the test set's ``inputs``,
    ``layer_times`` and ``labels`` also the spike raster, output-time histograms and confusion
    matrix. (`fsnn train` calls this at the end; `save_run_figures` adds the Yin-Yang maps.)
    """
    out = Path(workdir) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        _save(training_curves(metrics), out / "training_curves.png"),
        _save(silent_fractions(metrics), out / "silent_fractions.png"),
        _save(weight_histograms(kernels), out / "weight_histograms.png"),
    ]
    if layer_times is not None:
        paths += [
            _save(spike_raster(layer_times, inputs, labels), out / "spike_raster.png"),
            _save(output_time_histograms(layer_times[-1], labels), out / "output_time_histograms.png"),
            _save(confusion_matrix(layer_times[-1], labels), out / "confusion_matrix.png"),
        ]
    return paths


def save_run_figures(workdir: str | Path, *, data_dir: str | Path | None = None, run: int | None = None) -> list[Path]:
    """Draw every standard figure of a run directory (last checkpoint) into ``workdir/figures/``;
    of run ``run`` of a sweep directory into ``workdir/run-<run>/figures/``.

    `save_figures` on the test set, plus, for Yin-Yang, the decision and spike-time maps over the
    unit square (one more compiled forward pass, for the grid).
    """
    import jax

    from fsnn.encoding import values_to_times
    from fsnn.train.loop import load_data, restore_run
    from fsnn.train.sweep import sweep_run_metrics

    workdir = Path(workdir)
    config, trainer, state = restore_run(workdir, run=run)
    metrics = read_metrics(workdir) if run is None else sweep_run_metrics(workdir, run)
    target = workdir if run is None else workdir / f"run-{run}"
    kernels = [np.asarray(state.params["layers"][i]["kernel"]) for i in range(len(config.sizes))]
    x_test, y_test = load_data(config, data_dir)["test"]
    times = [np.asarray(t) for t in trainer.evaluate(state.params, x_test, y_test)["times"]]
    paths = save_figures(target, metrics, kernels, np.asarray(x_test), times, np.asarray(y_test))
    if config.dataset == "yinyang":
        from fsnn.data.yinyang import PUBLISHED, yinyang

        size, seed = PUBLISHED["test"]
        test = yinyang(min(config.eval_size or size, size), seed)  # the raw points behind x_test
        forward = jax.jit(lambda x: trainer.forward_batch(state.params, x)[-1])

        def output_times(points):
            return forward(values_to_times(points.astype(x_test.dtype), t_early=config.t_early, t_late=config.t_late))

        paths.append(
            _save(yinyang_maps(output_times, test.samples, test.labels), target / "figures" / "yinyang_maps.png")
        )
    return paths
