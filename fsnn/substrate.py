r"""An emulated analog substrate (BrainScaleS-2-like) and in-the-loop training.

Göltz et al. (2021) ran the forward pass on the analog BrainScaleS-2 chip, whose neurons differ
from the model, and computed the exact-gradient backward pass from the spike times the chip
produced. This module emulates such a substrate, so that anyone can study the same effects:

- **fixed-pattern variation**: every neuron's ``tau_m``, ``tau_s`` and ``theta - E_l`` are scaled by
  ``1 + variation * z`` (``z ~ N(0, 1)`` drawn once per *chip* seed, floored at 0.1), so the same
  chip seed gives the same pattern at every variation level;
- **signed weight quantisation**: ``bits`` bits of magnitude and a sign (BrainScaleS-2 routes
  excitatory and inhibitory weights through separate rows) give ``2**bits - 1`` steps each side of
  zero (6 bits: ±63), the largest being ``weight_max`` (model units, per layer); larger weights clip;
- **spike-time jitter**: Gaussian, independent per neuron and presentation (``inf`` stays ``inf``);
- **time-discretised integration** (optional): forward Euler with step ``dt`` up to ``t_max``
  instead of the exact solution; a spike is reported at the first grid time at or above threshold;
- **dead neurons**: a fraction of the neurons of the chip never fire.

In-the-loop training (`chip_layer`): the forward pass is the substrate's (quantised weights,
varied neurons, jitter); the backward pass is the *ideal* model's exact gradient evaluated at the
substrate's spike times (`fsnn.core.spike_time.spike_times_at`), with the float ("shadow") weights
quantised on every write (straight-through: the gradient of the quantised weight is used for the
float one). `network_on_substrate_batch` does the same for a batch with one backward pass per layer
(`fsnn.core.batch_grad.batch_spike_times` with the chip's times as ``observed``): what the trainer
uses. Times are in units of ``tau_s``; on BrainScaleS-2 ``tau_s`` is about 6 µs.

Example:
    >>> import jax
    >>> chip = BRAINSCALES2
    >>> pattern = draw_pattern(jax.random.key(chip.seed), (246, 10))  # a 256-246-10 chip
    >>> [p["z"].shape for p in pattern]
    [(3, 246), (3, 10)]
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike
from jaxtyping import Array, ArrayLike, Float

from fsnn.core.batch_grad import batch_spike_times
from fsnn.core.neuron import LIFParams
from fsnn.core.spike_time import _checked, _concrete, layer_spike_times, spike_times_at
from fsnn.nn import SpikingNetwork

__all__ = [
    "Substrate",
    "BRAINSCALES2",
    "substrate_values",
    "draw_pattern",
    "chip_neurons",
    "alive_neurons",
    "quantize_weights",
    "euler_spike_times",
    "jitter",
    "chip_layer",
    "network_on_substrate",
    "network_on_substrate_batch",
    "check_substrate",
]

_MIN_FACTOR = 0.1  # fixed-pattern factors are floored here: no time constant or threshold <= 0
_VARIED = ("tau_m", "tau_s", "threshold")


@dataclasses.dataclass(frozen=True)
class Substrate:
    """What distinguishes the emulated substrate from the ideal model (defaults: ideal).

    Attributes:
        variation: relative std of the per-neuron fixed-pattern variation of ``tau_m``, ``tau_s``
            and ``theta - E_l``.
        weight_bits: weight magnitude bits (``None``: float weights): ``2**bits - 1`` steps each side.
        weight_max: per layer, the model weight of the largest step (required with ``weight_bits``).
        jitter: std of the spike-time jitter per neuron and presentation (units of ``tau_s``).
        dt: Euler step of time-discretised integration (``None``: the exact solution).
        t_max: integration horizon with ``dt`` (later spikes count as silent).
        dead_fraction: fraction of the chip's neurons that never fire.
        seed: the chip: seeds the fixed pattern and the dead neurons.
        tau_us: wall-clock microseconds per unit of time (``tau_s``), for latencies.
    """

    variation: float = 0.0
    weight_bits: int | None = None
    weight_max: tuple[float, ...] = ()
    jitter: float = 0.0
    dt: float | None = None
    t_max: float = 8.0
    dead_fraction: float = 0.0
    seed: int = 0
    tau_us: float = 6.0

    def __post_init__(self):
        object.__setattr__(self, "weight_max", tuple(self.weight_max))  # (a list would make it unhashable)
        check_substrate(dataclasses.asdict(self))

    @property
    def is_ideal(self) -> bool:
        """Whether this substrate computes exactly what the model computes."""
        return (
            self.variation == 0
            and self.weight_bits is None
            and self.jitter == 0
            and self.dt is None
            and self.dead_fraction == 0
        )


def check_substrate(values: Mapping[str, object], prefix: str = "") -> None:
    """Raise `ValueError` naming the first impossible `Substrate` field of ``values`` (by field name;
    ``prefix`` is put before the names in the message, e.g. ``"substrate_"`` for config keys)."""
    v = values
    problems = {
        "variation": (not 0 <= v["variation"] <= 1, "is a relative spread in [0, 1]"),
        "weight_bits": (
            v["weight_bits"] is not None and not (_whole(v["weight_bits"]) and 1 <= v["weight_bits"] <= 16),
            "must be a whole number in 1..16, or None (float weights)",
        ),
        "weight_max": (any(not 0 < w < math.inf for w in v["weight_max"]), "values must be > 0 and finite"),
        "jitter": (not v["jitter"] >= 0, "must be >= 0"),
        "dead_fraction": (not 0 <= v["dead_fraction"] < 1, "must lie in [0, 1)"),
        "t_max": (not 0 < v["t_max"] < math.inf, "must be > 0 and finite"),
        "dt": (
            v["dt"] is not None and not (v["dt"] > 0 and v["t_max"] / v["dt"] <= 10**5),
            f"must be > 0 with at most 1e5 steps up to `{prefix}t_max` ({v['t_max']}), or None (exact)",
        ),
        "seed": (not _whole(v["seed"]), "must be a whole number"),
        "tau_us": (not 0 < v["tau_us"] < math.inf, "must be > 0 and finite"),
    }
    for key, (bad, why) in problems.items():
        if bad:
            raise ValueError(f"`{prefix}{key}` {why}; got {v[key]}.")


def _whole(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


# Assumed, order-of-magnitude values for a calibrated BrainScaleS-2 chip (not measurements):
# a few per cent of parameter spread after calibration, 6-bit weights (METHOD.md: ±63 steps),
# tens of nanoseconds of spike-time jitter (0.01 tau_s = 60 ns at tau_s = 6 µs), no dead neurons.
# The weight range belongs to the network: `dataclasses.replace(BRAINSCALES2, weight_max=(...))`.
BRAINSCALES2 = Substrate(variation=0.05, weight_bits=6, jitter=0.01)


def substrate_values(substrate: Substrate, n_layers: int, dtype: DTypeLike = jnp.float32) -> dict[str, Array]:
    """The values a compiled run reads as arrays (so sweeps can stack them): variation, jitter,
    dead fraction, chip seed, steps per side of zero (``levels``) and ``weight_max`` per layer."""
    if substrate.weight_bits is not None and len(substrate.weight_max) != n_layers:
        raise ValueError(
            f"`weight_max` needs one value per layer ({n_layers}) with `weight_bits`; got {substrate.weight_max}."
        )
    bits = substrate.weight_bits or 1
    weight_max = substrate.weight_max or (1.0,) * n_layers
    return {
        "variation": jnp.asarray(substrate.variation, dtype),
        "jitter": jnp.asarray(substrate.jitter, dtype),
        "dead_fraction": jnp.asarray(substrate.dead_fraction, dtype),
        "seed": jnp.asarray(substrate.seed, jnp.int32),
        "levels": jnp.asarray(2**bits - 1, dtype),
        "weight_max": jnp.asarray(weight_max, dtype),
    }


def draw_pattern(key: jax.Array, sizes: Sequence[int], dtype: DTypeLike = jnp.float32) -> list[dict[str, Array]]:
    """A chip: per layer, ``z [3, n]`` (N(0, 1) for ``tau_m``, ``tau_s``, ``theta``) and ``u [n]`` (U(0, 1))."""
    pattern = []
    for layer_key, n in zip(jax.random.split(key, len(sizes)), sizes):
        kz, ku = jax.random.split(layer_key)
        z = jax.random.normal(kz, (len(_VARIED), n), dtype)
        pattern.append({"z": z, "u": jax.random.uniform(ku, (n,), dtype)})
    return pattern


def chip_neurons(
    ideal: LIFParams, pattern: Mapping[str, Array], variation: ArrayLike, dead_fraction: ArrayLike
) -> tuple[LIFParams, Array]:
    """The chip's per-neuron parameters (``[n]`` each) for ``ideal`` ones, and which neurons live."""
    dtype = pattern["z"].dtype
    factors = jnp.maximum(1.0 + jnp.asarray(variation, dtype) * pattern["z"], _MIN_FACTOR)
    ones = jnp.ones(pattern["u"].shape, dtype)
    params = ideal.astype(dtype)
    chip = LIFParams(
        tau_m=params.tau_m * factors[0],
        tau_s=params.tau_s * factors[1],
        threshold=params.e_leak + (params.threshold - params.e_leak) * factors[2],
        g_leak=params.g_leak * ones,
        e_leak=params.e_leak * ones,
    )
    return chip, _alive(pattern, dead_fraction)


def _alive(pattern: Mapping[str, Array], dead_fraction: ArrayLike) -> Array:
    return pattern["u"] >= jnp.asarray(dead_fraction, pattern["u"].dtype)


def alive_neurons(values: Mapping[str, Array], sizes: Sequence[int], dtype: DTypeLike = jnp.float32) -> list[Array]:
    """Per layer of ``sizes``, which neurons of the chip ``values["seed"]`` (`substrate_values`) live:
    the others (``dead_fraction`` of them) never fire, whatever their weights."""
    return [_alive(p, values["dead_fraction"]) for p in draw_pattern(jax.random.key(values["seed"]), sizes, dtype)]


def quantize_weights(weights: Float[ArrayLike, "*s"], levels: ArrayLike, weight_max: ArrayLike) -> Float[Array, "*s"]:
    """Signed weights rounded to ``levels`` steps each side of zero, the largest step ``weight_max``.

    Example:
        >>> quantize_weights(jnp.array([0.26, -5.0]), 4, 1.0).tolist()  # steps of 0.25, clipped at ±1
        [0.25, -1.0]
    """
    weights = jnp.asarray(weights)
    levels = jnp.asarray(levels, weights.dtype)
    step = jnp.asarray(weight_max, weights.dtype) / levels
    return jnp.clip(jnp.round(weights / step), -levels, levels) * step


def euler_spike_times(
    input_times: Float[ArrayLike, " n_in"],
    weights: Float[ArrayLike, "n_in n_out"],
    params: LIFParams,
    dt: float,
    t_max: float,
) -> Float[Array, " n_out"]:
    """First spike times by forward-Euler integration with step ``dt`` on ``[0, t_max]`` (one sample).

    An input at ``t_i`` enters the synaptic current at the first grid time ``k dt >= t_i``; a neuron
    spikes at the first grid time where ``V >= theta`` (``inf`` if none by ``t_max``). Converges to
    `layer_spike_times` as ``dt -> 0`` (first order); ``dt`` must be below ``tau_m`` and ``tau_s``.
    ``O(n_in n_out + (t_max / dt) n_out)`` work, ``O(n_out)`` state.
    """
    if not (0 < dt < math.inf and 0 < t_max < math.inf):
        raise ValueError(f"`dt` and `t_max` must be > 0 and finite; got {dt}, {t_max}.")
    _, input_times, weights, p = _checked(input_times, weights, params, "root")
    taus = [_concrete(t) for t in (p.tau_m, p.tau_s)]
    shortest = None if any(t is None for t in taus) else min(float(np.min(t)) for t in taus)  # (traced: config)
    if shortest is not None and not dt < shortest:
        raise ValueError(
            f"`dt` ({dt}) must be below the time constants (tau_m {taus[0].tolist()}, tau_s {taus[1].tolist()}): "
            "with a step >= tau, forward Euler's decay factors 1 - dt / tau are <= 0: current and membrane oscillate."
        )
    n_steps = math.ceil(t_max / dt)
    arrives = jnp.isfinite(input_times) & (input_times <= n_steps * dt)
    step_of = jnp.where(arrives, jnp.ceil(jnp.maximum(input_times, 0.0) / dt), n_steps + 1).astype(jnp.int32)
    drive = jax.ops.segment_sum(weights, step_of, num_segments=n_steps + 2)[: n_steps + 1]  # [steps, n_out]
    capacitance = p.capacitance
    decay = 1.0 - dt / p.tau_s
    n_out = weights.shape[1]

    def step(carry, inputs):
        current, v, t_spike = carry
        jump, k = inputs
        current = current + jump
        t_spike = jnp.where(jnp.isinf(t_spike) & (v >= p.threshold), k * dt, t_spike)
        v = v + dt * (p.g_leak * (p.e_leak - v) + current) / capacitance
        return (current * decay, v, t_spike), None

    start = (
        jnp.zeros((n_out,), weights.dtype),
        jnp.broadcast_to(p.e_leak, (n_out,)).astype(weights.dtype),
        jnp.full((n_out,), jnp.inf, weights.dtype),
    )
    ks = jnp.arange(n_steps + 1).astype(weights.dtype)
    (_, _, t_spike), _ = jax.lax.scan(step, start, (drive, ks))
    return t_spike


def jitter(key: jax.Array, times: Float[Array, "*s"], std: ArrayLike) -> Float[Array, "*s"]:
    """``times`` plus independent N(0, std²) noise; silent (``inf``) entries stay silent."""
    noise = jnp.asarray(std, times.dtype) * jax.random.normal(key, times.shape, times.dtype)
    return jnp.where(jnp.isfinite(times), times + noise, times)


def chip_layer(
    input_times: Float[Array, " n_in"],
    weights: Float[Array, "n_in n_out"],
    ideal: LIFParams,
    pattern: Mapping[str, Array],
    values: Mapping[str, Array],
    layer: int,
    key: jax.Array,
    substrate: Substrate,
    *,
    solver: str,
    min_slope: float | None = None,
) -> Float[Array, " n_out"]:
    """One layer on the substrate (one sample), differentiable as in-the-loop training is.

    Value: the substrate's spike times (quantised weights, the chip's neurons, dead neurons
    silent, jitter). Gradient: the ideal layer's exact gradient at those times (`spike_times_at`
    with ``ideal`` parameters), reaching the float weights straight through the quantiser.

    Args:
        input_times: ``[n_in]``, bias spikes included.
        weights: the float weights ``[n_in, n_out]``.
        ideal: the model's neuron parameters (scalars or ``[n_out]``).
        pattern: this layer's entry of `draw_pattern`.
        values: `substrate_values` (arrays; ``weight_max`` indexed by ``layer``).
        key: jitter key of this presentation.
        substrate: the static settings (whether to quantise, Euler or exact).
        solver: the ideal model's solver (the chip uses ``root`` when its neurons vary).
        min_slope: floor of the model's membrane slope at the observed times (`spike_times_at`).
    """
    weights = _written(weights, values, layer, substrate)
    chip = chip_neurons(ideal, pattern, values["variation"], values["dead_fraction"])
    observed = _observe(substrate, solver, input_times, weights, chip, key, values["jitter"])
    return spike_times_at(observed, input_times, weights, ideal, solver=solver, min_slope=min_slope)


def _written(weights: Array, values: Mapping[str, Array], layer: int, substrate: Substrate) -> Array:
    """The weights as the substrate holds them (quantised), with the float weights' gradient (straight through)."""
    if substrate.weight_bits is None:
        return weights
    written = quantize_weights(weights, values["levels"], values["weight_max"][layer])
    return weights + jax.lax.stop_gradient(written - weights)


def _observe(
    substrate: Substrate,
    solver: str,
    input_times: Float[Array, " n_in"],
    weights: Float[Array, "n_in n_out"],
    chip: tuple[LIFParams, Array],
    key: jax.Array,
    jitter_std: Array,
) -> Float[Array, " n_out"]:
    """One sample's spike times on the chip (`chip_neurons`: its neurons and which live); no gradient."""
    neurons, alive = chip
    stopped = jax.lax.stop_gradient((input_times, weights, neurons))
    if substrate.dt is not None:
        observed = euler_spike_times(*stopped, substrate.dt, substrate.t_max)
    else:
        observed = layer_spike_times(*stopped, solver="root" if substrate.variation > 0 else solver)
    return jitter(key, jnp.where(alive, observed, jnp.inf), jitter_std)


def _model_pattern(model: SpikingNetwork, values: Mapping[str, Array]) -> list[dict[str, Array]]:
    """The fixed pattern of the chip ``values["seed"]`` for ``model``'s layers."""
    dtype = model.layers[0].kernel[...].dtype
    return draw_pattern(jax.random.key(values["seed"]), [layer.out_features for layer in model.layers], dtype)


def network_on_substrate(
    model: SpikingNetwork,
    input_times: Float[Array, " n_in"],
    values: Mapping[str, Array],
    key: jax.Array,
    substrate: Substrate,
    neurons: Sequence[Mapping[str, ArrayLike]] | None = None,
    *,
    min_slope: float | None = None,
) -> list[Float[Array, " n"]]:
    """Spike times of every layer of ``model`` run on the substrate (one sample; see `chip_layer`).

    ``values`` are `substrate_values` (the chip is ``values["seed"]``), ``key`` the jitter key of this
    presentation, ``neurons`` optional values of each layer's fixed neuron parameters (as for
    `SpikingNetwork`), ``min_slope`` the gradients' slope floor (`spike_times_at`).
    """
    pattern = _model_pattern(model, values)
    keys = jax.random.split(key, len(model.layers))
    out = []
    for i, layer in enumerate(model.layers):
        ideal = layer.neuron_with(None if neurons is None else neurons[i])
        args = (layer.with_bias(input_times), layer.kernel[...], ideal, pattern[i], values, i, keys[i], substrate)
        input_times = chip_layer(*args, solver=layer.solver, min_slope=min_slope)
        out.append(input_times)
    return out


def network_on_substrate_batch(
    model: SpikingNetwork,
    input_times: Float[Array, "batch n_in"],
    values: Mapping[str, Array],
    keys: jax.Array,
    substrate: Substrate,
    neurons: Sequence[Mapping[str, ArrayLike]] | None = None,
    *,
    min_slope: float | None = None,
    max_dw_norm: float | Array | None = None,
    drop_counters: Float[ArrayLike, " n_layers"] | None = None,
) -> list[Float[Array, "batch n"]]:
    """`network_on_substrate` for a batch (``keys [batch]``) with the batch-level backward pass.

    The same values, and for first-order gradients in the weights the same gradients, as
    `network_on_substrate` under `jax.vmap`, from one backward pass per layer and batch
    (`fsnn.core.batch_grad.batch_spike_times` with the chip's times as ``observed``); the gradient
    drop ``max_dw_norm`` is built in, its count per layer the gradient of ``drop_counters``
    (`fsnn.nn.SpikingNetwork.batch`). Neuron parameters cannot be learned through it.
    """
    pattern = _model_pattern(model, values)
    keys = jax.vmap(jax.random.split, (0, None))(keys, len(model.layers))  # [batch, n_layers]
    counters = jnp.zeros(len(model.layers), pattern[0]["u"].dtype) if drop_counters is None else drop_counters
    out = []
    for i, layer in enumerate(model.layers):
        ideal = layer.neuron_with(None if neurons is None else neurons[i])
        x = jax.vmap(layer.with_bias)(input_times)
        weights = _written(layer.kernel[...], values, i, substrate)
        chip = chip_neurons(ideal, pattern[i], values["variation"], values["dead_fraction"])
        observe = functools.partial(_observe, substrate, layer.solver)
        observed = jax.vmap(observe, (0, None, None, 0, None))(x, weights, chip, keys[:, i], values["jitter"])
        input_times = batch_spike_times(
            x,
            weights,
            ideal,
            solver=layer.solver,
            max_dw_norm=max_dw_norm,
            drop_counter=counters[i],
            observed=observed,
            min_slope=min_slope,
        )
        out.append(input_times)
    return out
