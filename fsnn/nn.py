"""Flax nnx modules: hold parameters, call the pure core. One sample per call; vmap for batches.

Example:
    >>> from flax import nnx
    >>> net = SpikingNetwork(4, (120, 3), init=((1.5, 0.8), (0.5, 0.8)), rngs=nnx.Rngs(0))
    >>> times = net(jnp.array([0.2, 0.5, 1.0, 1.7]))  # spike times of every layer
    >>> [t.shape for t in times]
    [(120,), (3,)]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, ArrayLike, Float

from fsnn.core.batch_grad import batch_spike_times
from fsnn.core.neuron import LIFParams
from fsnn.core.spike_time import layer_spike_times, resolve_solver

__all__ = ["SpikingDense", "SpikingNetwork", "batched"]

NEURON_FIELDS = LIFParams._fields


class SpikingDense(nnx.Module):
    """A dense layer of single-spike LIF neurons with optional bias spikes.

    Args:
        in_features: number of input spike trains (without bias spikes).
        out_features: number of neurons.
        init_mean, init_std: the kernel (bias rows included) is drawn from N(mean, std²).
        bias_times: fixed times of bias spikes appended to every input (each gets a weight row).
        neuron: `LIFParams` of the neurons (Python floats).
        trainable: names of `LIFParams` fields learned with the weights (e.g. ``("threshold",)``).
        per_neuron: learn one value per neuron instead of one per layer.
        solver: spike-time solver; ``"auto"`` picks from ``neuron`` (``"root"`` if time constants
            are trainable).
        param_dtype: dtype of all parameters.
        rngs: `nnx.Rngs` with a ``params`` stream.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        init_mean: float,
        init_std: float,
        bias_times: Sequence[float] = (),
        neuron: LIFParams = LIFParams(),
        trainable: Sequence[str] = (),
        per_neuron: bool = False,
        solver: str = "auto",
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        trainable = (trainable,) if isinstance(trainable, str) else tuple(trainable)  # "threshold": one name
        unknown = set(trainable) - set(NEURON_FIELDS)
        if unknown:
            raise ValueError(f"`trainable` holds unknown fields {sorted(unknown)}; allowed: {NEURON_FIELDS}.")
        if in_features < 0 or out_features <= 0:
            raise ValueError(f"layer sizes must be positive; got in={in_features}, out={out_features}.")
        if not (math.isfinite(init_mean) and 0 <= init_std < math.inf):
            raise ValueError(f"`init_mean` must be finite and `init_std` finite and >= 0; got {init_mean}, {init_std}.")
        if {"tau_m", "tau_s"} & set(trainable) and solver in ("lambertw", "quadratic"):
            raise ValueError(
                f"`solver={solver!r}` holds only at one tau_m / tau_s ratio, which learned time constants leave; "
                "use solver='root' or 'auto'."
            )
        if any(b != b for b in map(float, bias_times)):
            raise ValueError(f"`bias_times` must be spike times (inf: silent), not nan; got {tuple(bias_times)}.")
        self.in_features, self.out_features = in_features, out_features
        self.bias_times = tuple(float(b) for b in bias_times)
        n_rows = in_features + len(self.bias_times)
        self.kernel = nnx.Param(
            init_mean + init_std * jax.random.normal(rngs.params(), (n_rows, out_features), param_dtype)
        )
        shape = (out_features,) if per_neuron else ()
        self.neuron_fixed = {k: float(v) for k, v in zip(NEURON_FIELDS, neuron) if k not in trainable}
        self.neuron_learned = nnx.Dict(
            {k: nnx.Param(jnp.full(shape, float(getattr(neuron, k)), param_dtype)) for k in trainable}
        )
        self.solver = (
            "root" if ({"tau_m", "tau_s"} & set(trainable)) and solver == "auto" else resolve_solver(neuron, solver)
        )

    @property
    def neuron(self) -> LIFParams:
        return self.neuron_with()

    def neuron_with(self, fixed: Mapping[str, ArrayLike] | None = None) -> LIFParams:
        """The neuron parameters, with the fixed (not learned) ones optionally replaced by ``fixed``."""
        values = dict(self.neuron_fixed)
        unknown = sorted(set(fixed or ()) - set(NEURON_FIELDS))
        if unknown:  # (a misspelt key would change nothing without a word)
            raise ValueError(f"neuron values {unknown} are no `LIFParams` fields; choose from {NEURON_FIELDS}.")
        if fixed is not None:
            values.update({k: v for k, v in fixed.items() if k in self.neuron_fixed})
        values.update({k: v[...] for k, v in self.neuron_learned.items()})
        return LIFParams(**values)

    def __call__(
        self, input_times: Float[Array, " n_in"], neuron: Mapping[str, ArrayLike] | None = None
    ) -> Float[Array, " n_out"]:
        """Spike times ``[n_out]``; ``neuron`` may supply values (arrays) for the fixed neuron parameters."""
        return layer_spike_times(
            self.with_bias(input_times), self.kernel[...], self.neuron_with(neuron), solver=self.solver
        )

    def batch(
        self,
        input_times: Float[Array, "batch n_in"],
        neuron: Mapping[str, ArrayLike] | None = None,
        *,
        max_dw_norm: float | Array | None = None,
        drop_counter: Float[ArrayLike, ""] = 0.0,
        input_scale: float = 1.0,
    ) -> Float[Array, "batch n_out"]:
        """Spike times of a batch with the batch-level backward pass (`fsnn.core.batch_grad`).

        For first-order training of the weights: faster than `jax.vmap` of ``__call__``, with the
        gradient drop ``max_dw_norm`` built in (its count is the gradient of ``drop_counter``).
        ``input_scale`` multiplies the weights of the inputs (not of the bias spikes), as dropout
        on the inputs needs. Learned neuron parameters need ``__call__``.
        """
        if self.neuron_learned:
            raise ValueError("`batch` trains weights only; a layer with learned neuron parameters needs `__call__`.")
        input_times = self._checked(input_times, batch=True)
        kernel = self.kernel[...]
        if input_scale != 1.0:
            kernel = kernel.at[: self.in_features].multiply(input_scale)
        return batch_spike_times(
            jax.vmap(self.with_bias)(input_times),
            kernel,
            self.neuron_with(neuron),
            solver=self.solver,
            max_dw_norm=max_dw_norm,
            drop_counter=drop_counter,
        )

    def _checked(self, input_times: ArrayLike, batch: bool = False) -> Array:
        """``input_times`` of one sample ``[in_features]`` (or a ``batch``) in the parameters' dtype."""
        input_times = jnp.asarray(input_times, self.kernel[...].dtype)
        if (input_times.shape[1:] if batch else input_times.shape) != (self.in_features,):
            want = f"a batch, shape (B, {self.in_features})" if batch else f"one sample, shape ({self.in_features},)"
            other = " (one sample: `__call__`)" if batch else " (a batch: `batch`, or jax.vmap)"
            raise ValueError(f"`input_times` must be {want}{other}; got shape {input_times.shape}.")
        return input_times

    def with_bias(self, input_times: Float[Array, " n_in"]) -> Float[Array, " n_rows"]:
        """``input_times`` in the parameters' dtype with the bias spikes appended (one per kernel row)."""
        input_times = self._checked(input_times)
        if self.bias_times:
            input_times = jnp.concatenate([input_times, jnp.asarray(self.bias_times, input_times.dtype)])
        return input_times


class SpikingNetwork(nnx.Module):
    """A stack of `SpikingDense` layers; returns the spike times of every layer (one sample).

    Args:
        in_features: input size (without bias spikes).
        sizes: neurons per layer, the last being the output layer.
        init: ``(mean, std)`` of the initial weights, one pair per layer.
        bias_times: bias-spike times appended to the input of every layer.
        Other keyword arguments are passed to every `SpikingDense`.
    """

    def __init__(
        self,
        in_features: int,
        sizes: Sequence[int],
        *,
        init: Sequence[tuple[float, float]],
        bias_times: Sequence[float] = (0.9,),
        rngs: nnx.Rngs,
        **layer_kwargs,
    ):
        if not sizes:
            raise ValueError("`sizes` must list at least one layer (the last is the output layer); got none.")
        if len(init) != len(sizes):
            raise ValueError(f"`init` needs one (mean, std) pair per layer ({len(sizes)}); got {len(init)}.")
        fan_in = [in_features, *sizes[:-1]]
        self.layers = nnx.List(
            [
                SpikingDense(n_in, n_out, init_mean=m, init_std=s, bias_times=bias_times, rngs=rngs, **layer_kwargs)
                for n_in, n_out, (m, s) in zip(fan_in, sizes, init)
            ]
        )

    def __call__(
        self, input_times: Float[Array, " n_in"], neurons: Sequence[Mapping[str, ArrayLike]] | None = None
    ) -> list[Float[Array, " n"]]:
        """Spike times of every layer; ``neurons`` optionally gives each layer's fixed neuron values."""
        self._check_neurons(neurons)
        out = []
        for i, layer in enumerate(self.layers):
            input_times = layer(input_times, None if neurons is None else neurons[i])
            out.append(input_times)
        return out

    def _check_neurons(self, neurons: Sequence[Mapping[str, ArrayLike]] | None) -> None:
        if neurons is not None and len(neurons) != len(self.layers):
            raise ValueError(f"`neurons` needs one mapping per layer ({len(self.layers)}); got {len(neurons)}.")

    def batch(
        self,
        input_times: Float[Array, "batch n_in"],
        neurons: Sequence[Mapping[str, ArrayLike]] | None = None,
        *,
        max_dw_norm: float | Array | None = None,
        drop_counters: Float[ArrayLike, " n_layers"] | None = None,
        dropout: float = 0.0,
        key: Array | None = None,
    ) -> list[Float[Array, "batch n"]]:
        """Spike times of every layer for a batch through `SpikingDense.batch` (first-order training).

        ``drop_counters``: one per layer; their gradients count each layer's dropped columns.
        ``dropout`` (with ``key``): each hidden spike is removed (made silent) for the next layer
        with this probability, per sample and neuron, and the next layer's input weights are scaled
        by ``1 / (1 - dropout)`` (inverted dropout: the expected input stays). The returned times
        are those before the removal (the layer did fire; remedies and statistics see that).
        """
        if not 0 <= dropout < 1:
            raise ValueError(
                f"`dropout` (the probability of removing a hidden spike) must be in [0, 1); got {dropout}."
            )
        if dropout and key is None:
            raise ValueError("`dropout` > 0 needs a `key`.")
        self._check_neurons(neurons)
        counters = jnp.zeros(len(self.layers)) if drop_counters is None else drop_counters
        out = []
        for i, layer in enumerate(self.layers):
            neuron = None if neurons is None else neurons[i]
            if i > 0 and dropout:
                keep = jax.random.bernoulli(jax.random.fold_in(key, i), 1.0 - dropout, input_times.shape)
                input_times = jnp.where(keep, input_times, jnp.inf)
            scale = 1.0 / (1.0 - dropout) if i > 0 else 1.0
            input_times = layer.batch(
                input_times, neuron, max_dw_norm=max_dw_norm, drop_counter=counters[i], input_scale=scale
            )
            out.append(input_times)
        return out


def batched(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    input_times: Float[Array, "batch n_in"],
    neurons: Sequence[Mapping[str, ArrayLike]] | None = None,
) -> list[Array]:
    """Apply a split model to a batch: the one `jax.vmap` over samples of the library."""
    if jnp.ndim(input_times) != 2:  # (one sample was vmapped over its inputs: "got shape ()" per input)
        raise ValueError(f"`input_times` must be a batch, shape (B, n_in); got shape {jnp.shape(input_times)}.")

    def one(x):
        return nnx.merge(graphdef, state)(x, neurons)

    return jax.vmap(one)(input_times)
