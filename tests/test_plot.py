"""fsnn.plot: every figure drawn from a real short run, and checked for what it shows."""

import dataclasses

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pytest

from fsnn import LIFParams, layer_spike_times, plot
from fsnn.cli import main
from fsnn.train import load_config
from fsnn.train.loop import train_and_evaluate


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-epoch Yin-Yang run (smoke sizes), with the figures `fsnn train` draws."""
    workdir = tmp_path_factory.mktemp("plot") / "run"
    config = dataclasses.replace(load_config("yinyang", smoke=True), epochs=3, hidden=(30,))
    train_and_evaluate(config, workdir, quiet=True)
    return workdir


@pytest.fixture(scope="module")
def run_times(run):
    """Test-set inputs, labels and spike times of every layer of the short run's final network."""
    import jax

    from fsnn.nn import batched
    from fsnn.train.loop import load_data, restore_run

    config, trainer, state = restore_run(run)
    x, y = load_data(config)["test"]
    times = [np.asarray(t) for t in jax.jit(lambda v: batched(trainer.graphdef, state.params, v))(x)]
    kernels = [np.asarray(state.params["layers"][i]["kernel"]) for i in range(len(config.sizes))]
    return np.asarray(x), np.asarray(y), times, kernels


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_train_writes_training_figures_and_plot_draws_the_rest(run, capsys):
    names = {p.name for p in (run / "figures").iterdir()}
    drawn_by_train = {"training_curves.png", "silent_fractions.png", "weight_histograms.png", "spike_raster.png"}
    assert drawn_by_train | {"output_time_histograms.png", "confusion_matrix.png"} <= names
    assert "yinyang_maps.png" not in names  # needs a forward pass over a grid: `fsnn plot` only
    assert main(["plot", str(run)]) == 0
    printed = capsys.readouterr().out.split()
    expected = {"spike_raster.png", "output_time_histograms.png", "confusion_matrix.png", "yinyang_maps.png"}
    assert expected <= {p.split("/")[-1] for p in printed}
    for name in expected:
        png = (run / "figures" / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_training_curves_and_silent_fractions(run):
    metrics = plot.read_metrics(run)
    fig = plot.training_curves(metrics)
    loss_ax, acc_ax = fig.axes
    assert len(loss_ax.lines) == 2 and len(acc_ax.lines) == 2
    np.testing.assert_allclose(acc_ax.lines[1].get_ydata(), [100 * m["val_accuracy"] for m in metrics])
    fig = plot.silent_fractions(metrics)
    assert len(fig.axes[0].lines) == 2  # one per layer
    np.testing.assert_allclose(fig.axes[0].lines[1].get_ydata(), [m["train_silent_fraction"][1] for m in metrics])
    for draw in (plot.training_curves, plot.silent_fractions):  # a log without rows: empty axes (an IndexError)
        assert len(draw([]).axes[0].lines) == (2 if draw is plot.training_curves else 0)


def bin_counts(ax, which: int = 0) -> np.ndarray:
    """The bar heights of the ``which``-th histogram drawn on ``ax`` (one filled step polygon each:
    its outline rises to every bin's count at the bin's left edge and runs flat to its right edge)."""
    outline = ax.patches[which].get_xy()
    n_bins = (len(outline) - 1) // 4  # up along the bins (2 points each), back along the bottom
    return outline[1 : 2 * n_bins : 2, 1]


def test_weight_histograms_count_every_weight(run_times):
    kernels = run_times[3]
    fig = plot.weight_histograms(kernels, bins=10)
    assert len(fig.axes) == 2
    for ax, kernel in zip(fig.axes, kernels):
        counts = bin_counts(ax)
        assert len(counts) == 10 and counts.sum() == kernel.size
    diverged = [np.asarray(kernels[0]).copy(), kernels[1]]
    diverged[0][0, :2] = [np.inf, np.nan]  # (numpy: "supplied range of [inf, inf] is not finite")
    ax = plot.weight_histograms(diverged, bins=10).axes[0]
    assert bin_counts(ax).sum() == kernels[0].size - 2 and "2 non-finite not shown" in ax.get_title()
    for wrong in ([], kernels[0]):  # no layer; one kernel not in a list (its rows were taken for layers)
        with pytest.raises(ValueError, match=r"`kernels` must be a list of \[n_in, n_out\] weight arrays"):
            plot.weight_histograms(wrong)


def test_spike_raster_marks_spikes_and_decisions(run_times):
    x, labels, times, _ = run_times
    fig = plot.spike_raster(times, x, labels=labels, samples=(0, 1))
    assert len(fig.axes) == 3 * 2  # (input, hidden, output) x samples
    hidden_ax = fig.axes[2]  # row 1 (hidden), column 0
    assert len(hidden_ax.collections[0].get_offsets()) == np.isfinite(times[0][0]).sum()
    decision = np.min(times[1][0])
    if np.isfinite(decision):
        assert any(np.allclose(line.get_xdata(), decision) for line in hidden_ax.lines)
    with pytest.raises(ValueError, match=r"`layer_times` \(a list, one \[n_samples, n_neurons\] array per layer\)"):
        plot.spike_raster(times[-1])  # the output layer alone, not in a list: its rows were taken for layers
    with pytest.raises(ValueError, match=r"must share n_samples; got shapes \[\(\d+, \d+\), \(2, \d+\)"):
        plot.spike_raster([t[:2] for t in times], x)
    with pytest.raises(ValueError, match=r"`samples` must index the \d+ samples; got \(0, 100000\)"):
        plot.spike_raster(times, samples=(0, 100_000))


def test_membrane_traces_of_a_trained_neuron(run_times):
    x, _, times, kernels = run_times
    t_in = np.concatenate([x[0], [0.9]])  # the bias spike of the first layer
    j = int(np.argmax(np.isfinite(times[0][0])))  # a hidden neuron that fires for sample 0
    fig = plot.membrane_traces(t_in, kernels[0].astype(np.float64), neurons=(j,))
    spike_marker = [line for line in fig.axes[0].lines if len(line.get_xdata()) == 1]
    np.testing.assert_allclose(spike_marker[0].get_xdata()[0], times[0][0, j], rtol=1e-4)


def test_membrane_traces_cross_threshold_at_the_spike():
    t_in = np.array([0.2, 0.6, 1.1])
    w = np.array([[1.5, 0.2], [1.0, 0.1], [0.8, 0.3]])
    params = LIFParams()
    fig = plot.membrane_traces(t_in, w, params, neurons=(0, 1))
    ax = fig.axes[0]
    spike = float(layer_spike_times(jnp.asarray(t_in), jnp.asarray(w), params)[0])
    trace = ax.lines[0]
    t, v = trace.get_xdata(), trace.get_ydata()
    first_above = t[np.argmax(v >= 1.0)]
    assert abs(first_above - spike) <= t[1] - t[0]  # the exact solution crosses where the spike is
    assert np.all(v[t < spike - (t[1] - t[0])] < 1.0)
    marker_lines = [line for line in ax.lines if len(line.get_xdata()) == 1]
    assert len(marker_lines) == 1  # neuron 1 stays silent: only neuron 0's spike is marked
    for kwargs, message in (
        ({"neurons": (2,)}, r"`neurons` must list neurons of the layer, 0 \.\. 1; got \(2,\)"),  # (an IndexError)
        ({"t_max": np.inf}, r"`t_max` must be > 0 and finite"),  # (matplotlib's "Axis limits cannot be NaN or Inf")
        ({"t_max": -1.0}, r"`t_max` must be > 0 and finite"),  # (drew an empty, reversed axis)
        ({"points": 0}, r"`points` must be >= 2; got 0"),  # (drew no trace)
    ):
        with pytest.raises(ValueError, match=message):
            plot.membrane_traces(t_in, w, params, **kwargs)


def test_confusion_matrix_and_histograms_of_the_run(run_times):
    _, labels, times, _ = run_times
    out = times[-1]
    counts = plot.confusion_matrix(out, labels).axes[0].images[0].get_array()
    assert counts.sum() == len(labels)
    assert np.trace(counts[:, :3]) == np.sum(np.isfinite(out.min(axis=1)) & (out.argmin(axis=1) == labels))
    fig = plot.output_time_histograms(out, labels)
    label_counts = [bin_counts(ax).sum() for ax in fig.axes]
    assert label_counts == [np.isfinite(out[labels == c, c]).sum() for c in range(3)]


def test_histograms_and_confusion_matrix_count_samples():
    times = np.array([[0.5, 1.0, 2.0], [1.2, 0.7, np.inf], [np.inf, np.inf, np.inf], [0.9, 0.8, 0.3]])
    labels = np.array([0, 1, 2, 0])
    fig = plot.confusion_matrix(times, labels)
    counts = fig.axes[0].images[0].get_array()
    assert counts.shape == (3, 4) and counts.sum() == 4
    assert counts[0, 0] == 1 and counts[1, 1] == 1 and counts[2, 3] == 1 and counts[0, 2] == 1
    fig = plot.output_time_histograms(times, labels, bins=5)
    assert len(fig.axes) == 3
    own, other = bin_counts(fig.axes[0], 0), bin_counts(fig.axes[0], 1)
    assert own.sum() == 2 and other.sum() == 4  # class 0: two samples, every output finite in both
    for draw in (plot.confusion_matrix, plot.output_time_histograms):
        with pytest.raises(ValueError, match=r"`labels` must be integers 0..2 \(the output neurons\); got int64"):
            draw(times, np.array([0, 1, -1, 0]))  # (the confusion matrix counted -1 as the last class)
        with pytest.raises(ValueError, match=r"`labels` must be integers"):
            draw(times, labels.astype(float))
        with pytest.raises(ValueError, match=r"must fit; got \(4, 3\) and \(3,\)"):
            draw(times, labels[:3])


def test_yinyang_maps_show_decisions_over_the_plane():
    def times_fn(points):  # neuron 0 fires early left, neuron 1 early right, neuron 2 never
        return np.stack([0.5 + points[:, 0], 1.5 - points[:, 0], np.full(len(points), np.inf)], axis=1)

    samples = np.random.default_rng(0).uniform(size=(50, 4))
    fig = plot.yinyang_maps(times_fn, samples, np.arange(50) % 3, resolution=20)
    decision = fig.axes[1].images[0].get_array()
    assert decision.shape == (20, 20)
    assert np.all(decision[:, :9] == 0) and np.all(decision[:, 11:] == 1)
    with pytest.raises(ValueError, match=r"`resolution` \(grid points per side\) must be >= 2; got 0"):
        plot.yinyang_maps(times_fn, samples, np.arange(50) % 3, resolution=0)  # (drew empty maps)
