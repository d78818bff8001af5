"""Gradients of the validation loss with respect to hyperparameters, through unrolled training.

The training steps are the trainer's own (`Trainer._train_step`: input noise, gradient drop, weight
bumping, Adam), run from the initial state that the hyperparameters define, in the data order of
the first epochs of `fsnn.train.train_and_evaluate` (constant learning rate). `jax.grad` goes
through the `lax.scan` of steps, which needs second derivatives of the spike times (the custom JVP
rule is itself differentiable); each step is rematerialised (`jax.checkpoint`), so memory holds one
training state per step rather than every step's activations. A truncated window differentiates
only the last ``window`` steps.

Differentiable hyperparameters (names for `hypergradient`): ``learning_rate``, ``xi``, ``alpha``,
``beta``, ``input_noise``, ``bump_value``, ``init`` (``[n_layers, 2]``: mean, std), and the neuron
parameters ``tau_m``, ``tau_s`` (with ``solver="root"``), ``threshold``, ``g_leak``, ``e_leak`` (one value
per layer).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fsnn import xla
from fsnn.train.config import MAX_SEED, ConfigError, grid_values
from fsnn.train.loop import NEURON_KEYS, Trainer, resolved_solver, standard_normal_kernels

__all__ = [
    "DIFFERENTIABLE",
    "unrolled_validation_loss",
    "hypergradient",
    "tune",
    "grid_search",
    "get_hyper",
    "with_hyper",
    "check_values",
]

DIFFERENTIABLE = (
    "learning_rate", "neuron_lr_scale", "xi", "alpha", "beta", "input_noise", "bump_value", "init", *NEURON_KEYS
)  # fmt: skip
# loss parameters shape the training objective; the validation loss always uses the config's values
_LOSS_KEYS = ("xi", "alpha", "beta", "silent_loss", "mse_targets")
# what `Config.validate` asks of these values, checked again where values are given here directly
_POSITIVE = ("learning_rate", "xi", "beta", "lr_gamma", "bump_value", "tau_m", "tau_s", "g_leak")
_NON_NEGATIVE = ("neuron_lr_scale", "input_noise", "alpha", "max_dw_norm")  # (max_dw_norm 0: no drop)
_WHOLE = ("seed", "lr_step")  # int32 entries: a fraction would be cut without a word


def get_hyper(hp: dict, name: str) -> jax.Array:
    """``hp[name]``; neuron parameters are looked up in ``hp["neuron"]``."""
    return hp["neuron"][name] if name in NEURON_KEYS else hp[name]


def check_values(hp: dict, values: dict[str, Any]) -> None:
    """Raise `ConfigError` if a concrete value in ``values`` lies outside the model.

    The rules of `Config.validate`: every value finite; time constants, ``g_leak``, learning rate,
    its decay ``lr_gamma``, ξ, β, bump size > 0; α, input noise, ``neuron_lr_scale``,
    initial-weight std, ``max_dw_norm`` (0: off) >= 0; ``max_missing`` fractions in [0, 1];
    ``seed`` a 32-bit and ``lr_step`` a positive whole number; threshold above ``e_leak`` (the
    other taken from ``hp`` if not in ``values``). Values are shaped as `with_hyper` takes them.
    Traced values pass unchecked (inside a compiled program nothing can be raised).
    """

    def concrete(x, name):
        return None if isinstance(x, jax.core.Tracer) else np.broadcast_to(x, np.shape(get_hyper(hp, name)))

    def bad(name, why, value):
        raise ConfigError(f"hyperparameter `{name}` {why}; got {value.tolist()}.")

    given = {name: concrete(value, name) for name, value in values.items()}
    for name, value in given.items():
        if value is None:
            continue
        if not np.all(np.isfinite(value)):
            bad(name, "must be finite", value)
        if name in _WHOLE and not np.all(value == np.round(value)):
            bad(name, "must be a whole number", value)
        if name == "seed" and not np.all((-MAX_SEED - 1 <= value) & (value <= MAX_SEED)):
            bad(name, "must be a 32-bit integer, -2**31 .. 2**31 - 1", value)
        if name == "lr_step" and not np.all(value >= 1):
            bad(name, "must be >= 1", value)
        if name == "max_missing" and not np.all((value >= 0) & (value <= 1)):
            bad(name, "fractions must lie in [0, 1]", value)
        if name in _POSITIVE and not np.all(value > 0):
            bad(name, "must be > 0", value)
        if name in _NON_NEGATIVE and not np.all(value >= 0):
            bad(name, "must be >= 0", value)
        if name == "init" and not np.all(value[..., 1] >= 0):
            bad(name, "needs (mean, std >= 0) per layer", value)
    if {"threshold", "e_leak"} & set(values):
        theta, e_leak = (given[k] if k in given else concrete(hp["neuron"][k], k) for k in ("threshold", "e_leak"))
        if theta is not None and e_leak is not None and not np.all(theta > e_leak):
            bad("threshold", f"must exceed `e_leak` ({e_leak.tolist()})", theta)


def with_hyper(hp: dict, values: dict[str, jax.Array]) -> dict:
    """A copy of ``hp`` with ``values`` replaced (neuron parameters inside ``hp["neuron"]``).

    Values take the dtype and shape of the entries they replace (a Python float is fine); concrete
    ones are checked first (`check_values`).
    """
    check_values(hp, values)
    out = {**hp, "neuron": dict(hp["neuron"])}
    for name, value in values.items():
        old = get_hyper(hp, name)
        value = jnp.broadcast_to(jnp.asarray(value, old.dtype), old.shape)
        if name in NEURON_KEYS:
            out["neuron"][name] = value
        else:
            out[name] = value
    return out


def unrolled_validation_loss(
    trainer: Trainer,
    hp: dict,
    train: tuple[jax.Array, jax.Array],
    validation: tuple[jax.Array, jax.Array],
    *,
    steps: int,
    window: int | None = None,
    remat: bool = True,
    normals: list[jax.Array] | None = None,
) -> jax.Array:
    """Validation loss after ``steps`` training steps from the initial state defined by ``hp``.

    The validation loss is the config's (``trainer.hp``'s loss parameters), so that tuning e.g.
    ``xi`` changes training only, not the yardstick. The initial kernels are ``hp["init"]``'s mean
    and std times ``normals`` (`Trainer.init_state`; default: the draws of the trainer's config
    seed), while ``hp["seed"]`` orders the data and draws the noise.

    ``window`` (default: all steps) is how many of the last steps the gradient flows through; the
    steps before it are run under `jax.lax.stop_gradient` (truncated hypergradient).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"`steps` (training steps to unroll) must be a whole number >= 1; got {steps}.")
    window = steps if window is None else window
    if not isinstance(window, int) or not 0 < window <= steps:
        raise ConfigError(f"`window` must be a whole number in [1, steps={steps}]; got {window}.")
    _check_data(trainer, train, validation)  # under a caller's jit: shapes and dtypes only
    x, y = train
    n = x.shape[0]
    per_epoch = math.ceil(n / trainer.config.batch_size)
    key = jax.random.key(hp["seed"])
    epochs = jnp.arange(math.ceil(steps / per_epoch))
    plans = jax.vmap(lambda e: trainer._batch_plan(jax.random.fold_in(key, e), n))(epochs)
    idx, valid, keys = (a.reshape(-1, *a.shape[2:])[:steps] for a in plans)
    state = trainer._with_learning_rate(trainer.init_state(hp, normals), hp["learning_rate"])

    def step(st, batch):
        i, v, k = batch
        st, _ = trainer._train_step(st, (x[i], y[i], v, k), hp, first_order=False)  # differentiated again
        return st, None

    if remat:
        step = jax.checkpoint(step)
    head = steps - window
    if head:
        state, _ = jax.lax.scan(step, state, jax.tree.map(lambda a: a[:head], (idx, valid, keys)))
        state = jax.lax.stop_gradient(state)
    state, _ = jax.lax.scan(step, state, jax.tree.map(lambda a: a[head:], (idx, valid, keys)))
    criterion = {k: trainer.hp[k] for k in _LOSS_KEYS}  # the config's loss, whatever ``hp`` trains with
    return trainer._evaluate(state.params, *validation, {**hp, **criterion}, trainer.config.in_the_loop)["loss"]


def hypergradient(
    trainer: Trainer,
    names: str | Sequence[str],
    train: tuple[jax.Array, jax.Array],
    validation: tuple[jax.Array, jax.Array],
    *,
    steps: int,
    window: int | None = None,
    hp: dict | None = None,
    remat: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Validation loss after unrolled training and its gradient with respect to ``names``.

    Compiled once per trainer and settings (cached); ``hp`` defaults to ``trainer.hp``.
    Example: ``loss, grads = hypergradient(trainer, ["learning_rate", "threshold"], train, val, steps=20)``.
    """
    names = _names(names)
    unknown = [n for n in names if n not in DIFFERENTIABLE]
    if unknown or not names:
        raise ConfigError(f"hypergradient `names` {list(names)}: choose from {', '.join(DIFFERENTIABLE)}.")
    if {"tau_m", "tau_s"} & set(names) and resolved_solver(trainer.config) != "root":
        raise ConfigError(
            "hypergradients in tau_m / tau_s need the `root` solver (the closed forms fix tau_m / tau_s); "
            "set config key `solver` to 'root'."
        )
    if "neuron_lr_scale" in names and not trainer.config.trainable_neuron:
        raise ConfigError(
            "the hypergradient in `neuron_lr_scale` needs learned neuron parameters; set config key "
            "`trainable_neuron` (e.g. ('threshold',))."
        )
    _check_data(trainer, train, validation)
    hp = trainer.hp if hp is None else hp
    fn = _compiled(trainer, tuple(names), steps, window, remat)
    return fn({n: get_hyper(hp, n) for n in names}, hp, train, validation)


def _names(names: str | Sequence[str]) -> list[str]:
    """``names`` as a list, each once (one name alone may be given as a string: "xi", not "x", "i")."""
    return [names] if isinstance(names, str) else list(dict.fromkeys(names))


def _check_data(trainer: Trainer, train: tuple[jax.Array, jax.Array], validation: tuple[jax.Array, jax.Array]):
    """`Trainer.check_split` of both splits; before compiling, so that the labels' values are checked too."""
    trainer.check_split(*train, name="train")
    trainer.check_split(*validation, name="validation")


def _compiled(trainer: Trainer, names: tuple[str, ...], steps: int, window: int | None, remat: bool):
    cache = vars(trainer).setdefault("_hypergradients", {})  # lives and dies with the trainer
    key = (names, steps, window, remat)
    if key not in cache:

        def loss(values, hp, train, validation):
            return unrolled_validation_loss(
                trainer, with_hyper(hp, values), train, validation, steps=steps, window=window, remat=remat
            )

        cache[key] = xla.jit(jax.value_and_grad(loss))
    return cache[key]


def tune(
    trainer: Trainer,
    names: str | Sequence[str],
    train: tuple[jax.Array, jax.Array],
    validation: tuple[jax.Array, jax.Array],
    *,
    steps: int,
    iterations: int,
    meta_lr: float = 0.1,
    window: int | None = None,
    hp: dict | None = None,
) -> list[dict[str, Any]]:
    """Hypergradient descent: ``iterations`` Adam steps on the hyperparameters ``names``.

    Hyperparameters whose values are all positive are tuned in log space (a step of ``meta_lr``
    changes them by about that fraction); the others directly, those that must not be negative
    (α, input noise, ``neuron_lr_scale``, initial-weight std) kept at 0 or above. Returns one row per
    evaluation (``iterations + 1``: the start, then after each step) with the values and the
    validation loss. A step that leaves the model otherwise (a threshold at or below ``e_leak``)
    raises `ConfigError`, naming the step.
    """
    if not isinstance(iterations, int) or iterations < 0:
        raise ConfigError(f"`iterations` (descent steps) must be a whole number >= 0; got {iterations}.")
    if not 0 < meta_lr < math.inf:  # (a negative one ascended)
        raise ConfigError(f"`meta_lr` (the descent's Adam step size) must be > 0 and finite; got {meta_lr}.")
    hp, names = trainer.hp if hp is None else hp, _names(names)
    values = {n: get_hyper(hp, n) for n in names}
    logs = {n: bool(jnp.all(v > 0)) for n, v in values.items()}
    theta = {n: jnp.log(v) if logs[n] else v for n, v in values.items()}
    optimizer = optax.adam(meta_lr)
    opt_state = optimizer.init(theta)
    history = []
    for i in range(iterations + 1):
        values = {n: jnp.exp(t) if logs[n] else t for n, t in theta.items()}
        try:
            at = with_hyper(hp, values)
        except ConfigError as err:
            where = "the starting values" if i == 0 else f"step {i} (meta_lr {meta_lr})"
            raise ConfigError(f"tune: {where} left the model: {err}") from None
        loss, grads = hypergradient(trainer, names, train, validation, steps=steps, window=window, hp=at)
        history.append({"iteration": i, "loss": float(loss), **{n: jnp.asarray(v).tolist() for n, v in values.items()}})
        if i == iterations:
            break
        # chain rule into log space: d/d log v = v d/dv
        g_theta = {n: grads[n] * values[n] if logs[n] else grads[n] for n in names}
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(g_theta, opt_state)
        theta = {n: t if logs[n] else _at_least_zero(n, t) for n, t in optax.apply_updates(theta, updates).items()}
    return history


def _at_least_zero(name: str, value: jax.Array) -> jax.Array:
    """``value`` with what `check_values` wants non-negative clipped at 0 (a projected step)."""
    if name in _NON_NEGATIVE:
        return jnp.maximum(value, 0)
    if name == "init":
        return value.at[..., 1].max(0)
    return value


def grid_search(
    trainer: Trainer,
    grid: dict[str, Sequence[Any] | float],
    train: tuple[jax.Array, jax.Array],
    validation: tuple[jax.Array, jax.Array],
    *,
    steps: int,
    hp: dict | None = None,
) -> list[dict[str, Any]]:
    """The validation loss after ``steps`` unrolled steps at every combination of ``grid`` values.

    ``grid`` maps names to lists (or arrays) of values; a single number holds that name at one value.
    All points run in one compiled program (`jax.vmap` over the hyperparameters). One row per
    point with the values and the loss. A point's ``seed`` is its run's seed: it draws the initial
    kernels too (as `fsnn.train.sweep` does), not only the data order and noise.
    """
    _check_data(trainer, train, validation)
    hp = trainer.hp if hp is None else hp
    names = list(grid)
    choices = sorted({*hp, *NEURON_KEYS} - {"neuron", "substrate"})
    if not names or not set(names) <= set(choices):
        raise ConfigError(f"grid_search `grid` keys {names}: choose from {', '.join(choices)}.")
    axes = [grid_values(v) for v in grid.values()]  # a single number: one value
    empty = [n for n, axis in zip(names, axes) if not len(axis)]
    if empty:
        raise ConfigError(f"grid_search `grid` lists no values for {empty}; give one or more per key.")
    points = list(itertools.product(*axes))
    for point in points:
        check_values(hp, dict(zip(names, point)))
    stacked = {n: jnp.stack([jnp.asarray(p[j], get_hyper(hp, n).dtype) for p in points]) for j, n in enumerate(names)}
    seeds = np.asarray(stacked["seed"] if "seed" in stacked else np.broadcast_to(hp["seed"], len(points))).tolist()
    draws = {s: standard_normal_kernels(dataclasses.replace(trainer.config, seed=s)) for s in set(seeds)}
    normals = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[draws[s] for s in seeds])

    def loss(values, normals):
        hp_point = with_hyper(hp, values)
        return unrolled_validation_loss(trainer, hp_point, train, validation, steps=steps, normals=normals)

    losses = xla.jit(jax.vmap(loss))(stacked, normals)
    return [
        {"point": i, "loss": float(losses[i]), **{n: jnp.asarray(stacked[n][i]).tolist() for n in names}}
        for i in range(len(points))
    ]
