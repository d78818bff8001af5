"""Training: one compiled program per epoch (lax.scan over device-resident batches).

`train_and_evaluate(config, workdir)` writes into ``workdir``: ``config.json``, ``metrics.jsonl``
(one line per epoch), orbax checkpoints under ``checkpoints/`` and ``results.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jax.typing import ArrayLike

from fsnn import locks, xla
from fsnn.core import spike_time
from fsnn.core.spike_time import resolve_solver
from fsnn.data.images import data_dir_from_env, encode_images, load_images
from fsnn.data.yinyang import yinyang_splits
from fsnn.encoding import add_input_noise, flip_image, shift_image, values_to_times
from fsnn.logs import shows_bars
from fsnn.losses import is_correct, mse_spike_time, ttfs_cross_entropy
from fsnn.nn import SpikingNetwork, batched
from fsnn.remedies import BumpState, apply_bump, bump_targets, drop_large_weight_grads
from fsnn.substrate import alive_neurons, network_on_substrate, network_on_substrate_batch, substrate_values
from fsnn.train import checkpoint
from fsnn.train.config import Config, ConfigError, checked_config, saved_configs

__all__ = [
    "TrainState",
    "Trainer",
    "hyperparameters",
    "activity",
    "activity_summary",
    "train_and_evaluate",
    "load_data",
    "evaluate_run",
    "restore_run",
]


class TrainState(NamedTuple):
    params: dict
    opt_state: Any
    bump: BumpState
    epoch: jax.Array  # epochs completed


def load_data(
    config: Config, data_dir: str | Path | None = None, *, quiet: bool = False
) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Encoded input times ``[n, n_in]`` and labels ``[n]`` per split, on the default device.

    Yin-Yang is generated; image datasets come from `fsnn.data.load_images` (originals in
    ``data_dir`` or ``$FSNN_DATA_DIR``, else downloaded by TFDS; ``quiet``: no progress bars while
    they are prepared the first time).
    """
    dtype = jnp.dtype(config.dtype)
    cuts = {"train": config.train_size, "validation": config.eval_size, "test": config.eval_size}
    if config.dataset == "yinyang":
        splits = {
            name: (values_to_times(split.samples, t_early=config.t_early, t_late=config.t_late), split.labels)
            for name, split in yinyang_splits({k: v for k, v in cuts.items() if v}).items()
        }
    else:
        base, size = (config.dataset[:-2], 16) if config.dataset.endswith("16") else (config.dataset, 28)
        images = load_images(base, data_dir=data_dir or data_dir_from_env(), quiet=quiet)
        splits = {  # only the images kept are encoded
            name: (
                encode_images(
                    split.images[: cuts[name] or None], size=size, t_early=config.t_early, t_late=config.t_late
                ),
                split.labels,
            )
            for name, split in images.items()
        }
    out = {}
    for name, (times, labels) in splits.items():
        n = cuts[name] or len(labels)
        out[name] = (jnp.asarray(times[:n], dtype), jnp.asarray(labels[:n], jnp.int32))
    return out


def build_model(config: Config) -> SpikingNetwork:
    """The network of ``config`` with freshly initialised parameters (seed ``config.seed``)."""
    return SpikingNetwork(
        config.n_inputs,
        config.sizes,
        init=config.init,
        bias_times=config.bias_times,
        neuron=config.neuron,
        trainable=config.trainable_neuron,
        per_neuron=config.per_neuron,
        solver=config.solver,
        param_dtype=jnp.dtype(config.dtype),
        rngs=nnx.Rngs(params=config.seed),
    )


# Config keys a compiled run reads as arrays (`hyperparameters`), not as constants: runs that
# differ only in these share one program (`fsnn.train.sweep`) and can be differentiated in them
# (`fsnn.train.hypergrad`). The time constants join them when the solver is "root".
DYNAMIC_KEYS = (
    "seed", "init", "learning_rate", "neuron_lr_scale", "lr_step", "lr_gamma", "xi", "alpha", "beta",
    "silent_loss", "mse_targets", "input_noise", "bump_value", "max_missing", "max_dw_norm", "threshold",
    "g_leak", "e_leak",
    "substrate_variation", "substrate_weight_bits", "substrate_weight_max", "substrate_jitter",
    "substrate_dead_fraction", "substrate_seed",
)  # fmt: skip
NEURON_KEYS = ("tau_m", "tau_s", "threshold", "g_leak", "e_leak")
# learned neuron parameters stay at least this fraction of their initial value (threshold: of its
# initial distance from rest) away from where the neuron model breaks down (`Trainer._within_model`)
NEURON_FLOOR = 1e-3
_LOG_SECONDS = 30.0  # between progress lines when stderr is a log file, not a terminal


def hyperparameters(config: Config) -> dict[str, Any]:
    """The dynamic config values of a run as arrays (in the run's dtype; seed and step as int32).

    ``init`` is ``[n_layers, 2]`` (mean, std); ``neuron`` maps each `LIFParams` field to one value per
    layer (the fixed value, or the initial value of a learned one); ``substrate`` holds the
    `fsnn.substrate.substrate_values`.
    """
    dtype = jnp.dtype(config.dtype)
    n_layers = len(config.sizes)

    def arr(value):
        return jnp.asarray(value, dtype)

    return {
        "seed": jnp.asarray(config.seed, jnp.int32),
        "init": arr(config.init),
        "learning_rate": arr(config.learning_rate),
        "neuron_lr_scale": arr(config.neuron_lr_scale),
        "lr_step": jnp.asarray(min(config.lr_step, 2**31 - 1), jnp.int32),  # a larger one never decays either
        "lr_gamma": arr(config.lr_gamma),
        "xi": arr(config.xi),
        "alpha": arr(config.alpha),
        "beta": arr(config.beta),
        "silent_loss": arr(config.silent_loss),
        "mse_targets": arr(config.mse_targets),
        "input_noise": arr(config.input_noise),
        "bump_value": arr(config.bump_value),
        "max_missing": arr(config.max_missing),
        "max_dw_norm": arr(config.max_dw_norm or 0.0),
        "neuron": {k: arr([getattr(config, k)] * n_layers) for k in NEURON_KEYS},
        "substrate": substrate_values(config.substrate, n_layers, dtype),
    }


def resolved_solver(config: Config) -> str:
    """The spike-time solver a run of ``config`` uses (``"root"`` when time constants are learned)."""
    if {"tau_m", "tau_s"} & set(config.trainable_neuron):
        return "root"
    return resolve_solver(config.neuron, config.solver)


def standard_normal_kernels(config: Config) -> list[jax.Array]:
    """Per layer, the seed's N(0, 1) draws behind the initial kernels (kernel = mean + std * draw)."""
    standard = dataclasses.replace(config, init=((0.0, 1.0),) * len(config.sizes))
    return [layer.kernel[...] for layer in build_model(standard).layers]


def _sample_loss(config: Config):
    """``loss(times [n_out], label, hp)`` for one sample; loss parameters come from ``hp``.

    The losses see the output times in units of the output layer's ``tau_s`` (as in Göltz et al.
    2021, eq. 8): ``xi``, ``beta`` and the MSE targets are multiples of ``tau_s``, so they keep
    their meaning when the time constants change.
    """
    if config.loss == "ttfs":

        def loss(t, y, hp):
            parameters = {k: hp[k] for k in ("xi", "alpha", "beta", "silent_loss")}
            return ttfs_cross_entropy(t, y, **parameters)

    else:

        def loss(t, y, hp):
            return mse_spike_time(t, y, t_correct=hp["mse_targets"][0], t_wrong=hp["mse_targets"][1])

    return lambda t, y, hp: loss(t / hp["neuron"]["tau_s"][-1], y, hp)


class Trainer:
    """Compiled training and evaluation for one config (one compilation per run).

    The compiled functions take the run's `hyperparameters` as an argument (default: ``self.hp``,
    those of ``config``); everything else in ``config`` is fixed at compile time.
    """

    def __init__(self, config: Config):
        self.config = checked_config(config)
        model = build_model(config)
        self.graphdef, state = nnx.split(model)
        self.init_params = nnx.to_pure_dict(state)
        self.n_layers = len(config.sizes)
        self.hp = hyperparameters(config)
        self.normals = standard_normal_kernels(config)
        self.optimizer = optax.inject_hyperparams(optax.adam)(
            learning_rate=config.learning_rate,
            b1=config.adam_b1,
            b2=config.adam_b2,
            eps=config.adam_eps,
            eps_root=config.adam_eps_root,
        )
        self.loss_fn = _sample_loss(config)
        self.substrate = config.substrate
        self.mesh = _data_mesh(config)
        self.jit_train_epoch = xla.jit(self._train_epoch)
        self.jit_evaluate = xla.jit(self._evaluate, static_argnums=4)

    @property
    def n_devices(self) -> int:
        return 1 if self.mesh is None else self.mesh.size

    def check_split(self, x: jax.Array, y: jax.Array, name: str = "x, y") -> None:
        """Raise a ValueError unless ``x`` (N, n_inputs) are floating input spike times and ``y`` (N,)
        integer labels of the output layer's classes (their values are checked where concrete)."""
        config = self.config
        (x_shape, x_dtype), (y_shape, y_dtype) = ((np.shape(a), jnp.result_type(a)) for a in (x, y))
        problem = None
        if len(x_shape) != 2 or x_shape[1] != config.n_inputs or not jnp.issubdtype(x_dtype, jnp.floating):
            problem = f"input spike times must be floats of shape (N, {config.n_inputs}); got {x_dtype} {x_shape}"
        elif y_shape != x_shape[:1] or not jnp.issubdtype(y_dtype, jnp.integer):
            problem = f"labels must be integers of shape ({x_shape[0]},), one per input; got {y_dtype} {y_shape}"
        elif not x_shape[0]:
            problem = "no samples"
        elif not isinstance(y, jax.core.Tracer):
            labels = np.asarray(y)  # (numpy: a jnp reduction would be traced inside a caller's jit)
            wrong = int(np.sum((labels < 0) | (labels >= config.n_classes)))
            problem = f"{wrong} labels outside 0..{config.n_classes - 1}" if wrong else None
        if problem:
            raise ValueError(f"`{name}`: {problem} (dataset {config.dataset!r}).")

    def train_epoch(self, state: TrainState, x: jax.Array, y: jax.Array, hp: dict | None = None):
        """One compiled epoch: ``(state, summary)``."""
        self.check_split(x, y)
        with sharded_search(self.mesh):
            return self.jit_train_epoch(state, x, y, self.hp if hp is None else hp)

    def evaluate(
        self, params: dict, x: jax.Array, y: jax.Array, hp: dict | None = None, on_substrate: bool | None = None
    ) -> dict:
        """Loss, accuracy, silent fractions, activity and spike times over a split (compiled).

        ``on_substrate`` runs the forward pass on the emulated substrate (default: where the
        run trains, i.e. ``config.in_the_loop``).
        """
        on_substrate = self.config.in_the_loop if on_substrate is None else on_substrate
        self.check_split(x, y)
        with sharded_search(self.mesh):
            return self.jit_evaluate(params, x, y, self.hp if hp is None else hp, on_substrate)

    def both_sides(self, params: dict, x: jax.Array, y: jax.Array, own: dict) -> tuple[dict, dict]:
        """``(on the substrate, on the ideal model)``: ``own`` (the default `evaluate` of these
        arguments) and the same weights evaluated on the other side."""
        other = self.evaluate(params, x, y, on_substrate=not self.config.in_the_loop)
        return (own, other) if self.config.in_the_loop else (other, own)

    def init_state(self, hp: dict | None = None, normals: list[jax.Array] | None = None) -> TrainState:
        """The initial state: kernels ``mean + std * normals`` with ``(mean, std) = hp["init"]``.

        ``normals`` (default: this config's seed) are the standard-normal kernels of
        `standard_normal_kernels`; the result equals the freshly built model's parameters and is
        differentiable in ``hp``.
        """
        hp = self.hp if hp is None else hp
        normals = self.normals if normals is None else normals
        layers = {}
        for i, layer in self.init_params["layers"].items():
            layers[i] = {**layer, "kernel": hp["init"][i, 0] + hp["init"][i, 1] * normals[i]}
            if "neuron_learned" in layer:  # learned neuron parameters start at their hp values
                learned = layer["neuron_learned"]
                layers[i]["neuron_learned"] = {k: jnp.full_like(v, hp["neuron"][k][i]) for k, v in learned.items()}
        params = {**self.init_params, "layers": layers}
        return TrainState(
            params,
            self.optimizer.init(params),
            BumpState.initial(hp["bump_value"], hp["bump_value"].dtype),
            jnp.asarray(0, jnp.int32),
        )

    def place(self, tree):
        """Put arrays on the training devices, replicated (a no-op on one device)."""
        if self.mesh is None:
            return tree
        sharding = NamedSharding(self.mesh, PartitionSpec())
        if jax.process_count() > 1:  # every process holds the same full arrays
            return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), tree)
        return jax.device_put(tree, sharding)

    def _shard_batch(self, *arrays):
        """Split the leading (sample) axis over the mesh's ``data`` axis (XLA inserts the all-reduces)."""
        if self.mesh is None:
            return arrays
        sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        return tuple(jax.lax.with_sharding_constraint(a, sharding) for a in arrays)

    def _neurons(self, hp) -> list[dict]:
        return [{k: v[i] for k, v in hp["neuron"].items()} for i in range(self.n_layers)]

    def forward(
        self, params: dict, x: jax.Array, hp: dict | None = None, key: jax.Array | None = None
    ) -> list[jax.Array]:
        """Spike times of every layer for one sample; with a (jitter) ``key``, on the substrate."""
        hp = self.hp if hp is None else hp
        model = nnx.merge(self.graphdef, params)
        if key is None:
            return model(x, self._neurons(hp))
        return network_on_substrate(
            model,
            x,
            hp["substrate"],
            key,
            self.substrate,
            self._neurons(hp),
            min_slope=self.config.in_the_loop_min_slope,
        )

    def forward_batch(
        self, params: dict, x: jax.Array, hp: dict | None = None, keys: jax.Array | None = None
    ) -> list[jax.Array]:
        """Spike times of every layer for a batch ``[batch, n_in]``; with ``keys [batch]``, on the substrate."""
        hp = self.hp if hp is None else hp
        if keys is None:
            return batched(self.graphdef, params, x, self._neurons(hp))
        return jax.vmap(self.forward, in_axes=(None, 0, None, 0))(params, x, hp, keys)

    # -- one batch ----------------------------------------------------------------------------
    def _grads(self, params, x, y, valid, hp, keys, first_order=True, dropout_key=None):
        """Loss, per-layer times and gradient of the batch-mean loss (gradient drop applied).

        ``keys [batch]`` (jitter keys) put the forward pass on the substrate; ``None``: ideal.
        ``first_order``: the batch-level backward pass (`SpikingNetwork.batch`, on the substrate
        `network_on_substrate_batch`) where it applies (weights only); it cannot be differentiated
        again (hypergradients pass ``False``: per-sample custom JVPs under `jax.vmap`).
        ``dropout_key``: the step's key for ``config.dropout`` (batch-level path only).
        """
        cfg = self.config
        n_valid = jnp.maximum(jnp.sum(valid), 1).astype(x.dtype)
        if cfg.dropout and not first_order:  # the config rules out the other paths
            raise ValueError("config key `dropout` needs first-order training (not hypergradients); set it to 0.")

        if first_order and not cfg.trainable_neuron:
            max_norm = None if cfg.max_dw_norm is None else hp["max_dw_norm"]

            def batch_loss(p, counters):
                model = nnx.merge(self.graphdef, p)
                if keys is None:
                    times = model.batch(
                        x,
                        self._neurons(hp),
                        max_dw_norm=max_norm,
                        drop_counters=counters,
                        dropout=cfg.dropout,
                        key=dropout_key,
                    )
                else:
                    times = network_on_substrate_batch(
                        model,
                        x,
                        hp["substrate"],
                        keys,
                        self.substrate,
                        self._neurons(hp),
                        min_slope=cfg.in_the_loop_min_slope,
                        max_dw_norm=max_norm,
                        drop_counters=counters,
                    )
                losses = jax.vmap(self.loss_fn, in_axes=(0, 0, None))(times[-1], y, hp)
                return jnp.sum(jnp.where(valid, losses, 0.0) / n_valid), times

            counters = jnp.zeros(self.n_layers, x.dtype)
            (loss, times), (grads, dropped) = jax.value_and_grad(batch_loss, (0, 1), has_aux=True)(params, counters)
            return loss, times, grads, jnp.sum(dropped).astype(jnp.int32)
        if cfg.max_dw_norm is None:

            def batch_loss(p):
                times = self.forward_batch(p, x, hp, keys)
                losses = jax.vmap(self.loss_fn, in_axes=(0, 0, None))(times[-1], y, hp)
                return jnp.sum(jnp.where(valid, losses, 0.0) / n_valid), times

            (loss, times), grads = jax.value_and_grad(batch_loss, has_aux=True)(params)
            return loss, times, grads, jnp.asarray(0, jnp.int32)

        def sample_loss(p, xi, yi, vi, ki):
            times = self.forward(p, xi, hp, ki)
            return jnp.where(vi, self.loss_fn(times[-1], yi, hp), 0.0) / n_valid, times

        per_sample = jax.vmap(jax.value_and_grad(sample_loss, has_aux=True), in_axes=(None, 0, 0, 0, 0))
        (losses, times), sample_grads = per_sample(params, x, y, valid, keys)
        grads = jax.tree.map(lambda g: jnp.sum(g, axis=0), sample_grads)
        dropped = jnp.asarray(0, jnp.int32)
        for i in range(self.n_layers):
            kernel, n = drop_large_weight_grads(sample_grads["layers"][i]["kernel"], hp["max_dw_norm"])
            grads["layers"][i]["kernel"] = kernel
            dropped = dropped + n
        return jnp.sum(losses), times, grads, dropped

    def _train_step(self, state: TrainState, batch, hp, first_order: bool = True):
        cfg = self.config
        x, y, valid, key = batch
        side = math.isqrt(x.shape[1])
        if cfg.augment_flip:
            flips = jax.random.bernoulli(jax.random.fold_in(key, 3), 0.5, (x.shape[0],))
            x = jax.vmap(flip_image, (0, 0, None))(x, flips, side)
        if cfg.augment_shift > 0:
            shifts = jax.random.randint(jax.random.fold_in(key, 2), (x.shape[0], 2), 0, 2 * cfg.augment_shift + 1)
            x = jax.vmap(shift_image, (0, 0, None))(x, shifts - cfg.augment_shift, side)
        if cfg.input_noise > 0:
            x = add_input_noise(key, x, hp["input_noise"])
        keys = jax.random.split(jax.random.fold_in(key, 1), x.shape[0]) if cfg.in_the_loop else None
        dropout_key = jax.random.fold_in(key, 4) if cfg.dropout else None
        loss, times, grads, dropped = self._grads(state.params, x, y, valid, hp, keys, first_order, dropout_key)
        with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes int and float
            updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        if cfg.trainable_neuron:  # Adam's step is invariant to the gradient's scale: scale the step
            for i in range(self.n_layers):
                learned = updates["layers"][i]["neuron_learned"]
                updates["layers"][i]["neuron_learned"] = jax.tree.map(lambda u: u * hp["neuron_lr_scale"], learned)
        params = optax.apply_updates(state.params, updates)
        if cfg.trainable_neuron:
            params = self._within_model(params, hp)
        bump = state.bump
        layer = jnp.asarray(-1, jnp.int32)
        if cfg.weight_bumping:
            max_missing = [hp["max_missing"][i] for i in range(self.n_layers)]
            # in the loop, the chip's dead neurons (if any) are no bump's business
            alive = alive_neurons(hp["substrate"], cfg.sizes, times[0].dtype) if cfg.in_the_loop else None
            layer, targets = bump_targets(times, y, valid, max_missing, output_criterion=cfg.bump_output, alive=alive)
            kernels = [state.params["layers"][i]["kernel"] for i in range(self.n_layers)]
            bumped, bump = apply_bump(kernels, targets, layer, state.bump, hp["bump_value"])
            use_bump = layer >= 0  # a bumped batch takes no optimizer step: keep the old state

            def keep_old(old, new):
                return jnp.where(use_bump, old, new)

            params = jax.tree.map(keep_old, state.params, params)
            opt_state = jax.tree.map(keep_old, state.opt_state, opt_state)
            for i, kernel in enumerate(bumped):
                params["layers"][i]["kernel"] = jnp.where(use_bump, kernel, params["layers"][i]["kernel"])
        n_valid = jnp.sum(valid).astype(loss.dtype)
        correct = jnp.sum(jax.vmap(is_correct)(times[-1], y) & valid)
        silent = jnp.stack([jnp.sum(~jnp.isfinite(t) & valid[:, None]) for t in times])
        bumps = jnp.stack([layer == i for i in range(self.n_layers)]).astype(jnp.int32)
        metrics = {
            "loss": loss * n_valid,
            "correct": correct,
            "silent": silent,
            "bumps": bumps,
            "dropped": dropped,
        }
        return TrainState(params, opt_state, bump, state.epoch), metrics

    def _within_model(self, params: dict, hp: dict) -> dict:
        """``params`` with the learned neuron parameters kept where the neuron model holds: time
        constants and leak positive, threshold above rest, each at least `NEURON_FLOOR` times its
        initial value (or distance from rest). Below, spike times and their gradients are NaN, and
        an optimizer step can get there (thresholds drift towards rest when learned)."""
        layers = dict(params["layers"])
        for i in range(self.n_layers):
            learned = dict(layers[i]["neuron_learned"])
            start = {k: hp["neuron"][k][i] for k in NEURON_KEYS}  # the initial (or fixed) values
            for k in ("tau_m", "tau_s", "g_leak"):
                if k in learned:
                    learned[k] = jnp.maximum(learned[k], NEURON_FLOOR * start[k])
            margin = NEURON_FLOOR * (start["threshold"] - start["e_leak"])
            if "threshold" in learned:
                learned["threshold"] = jnp.maximum(
                    learned["threshold"], learned.get("e_leak", start["e_leak"]) + margin
                )
            elif "e_leak" in learned:
                learned["e_leak"] = jnp.minimum(learned["e_leak"], start["threshold"] - margin)
            layers[i] = {**layers[i], "neuron_learned": learned}
        return {**params, "layers": layers}

    # -- one epoch ----------------------------------------------------------------------------
    def _learning_rate(self, epoch: jax.Array, hp: dict) -> jax.Array:
        """The step schedule: ``learning_rate * lr_gamma ** (epoch // lr_step)``."""
        decays = (epoch // hp["lr_step"]).astype(hp["learning_rate"].dtype)
        return hp["learning_rate"] * jnp.power(hp["lr_gamma"], decays)

    def _with_learning_rate(self, state: TrainState, lr: jax.Array) -> TrainState:
        hyper = dict(state.opt_state.hyperparams, learning_rate=lr)
        return state._replace(opt_state=state.opt_state._replace(hyperparams=hyper))

    def _batch_plan(self, key: jax.Array, n: int):
        """Shuffled sample indices ``[n_batches, batch]``, their validity mask and one key per batch."""
        # A batch larger than the split is the whole split (rounded up to whole devices), not padding.
        batch = min(self.config.batch_size, -(-n // self.n_devices) * self.n_devices)
        n_batches = math.ceil(n / batch)
        perm_key, noise_key = jax.random.split(key)
        perm = jax.random.permutation(perm_key, n)
        pad = n_batches * batch - n
        idx = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(n_batches, batch)
        valid = (jnp.arange(n_batches * batch) < n).reshape(n_batches, batch)
        return idx, valid, jax.random.split(noise_key, n_batches)

    def _train_epoch(self, state: TrainState, x: jax.Array, y: jax.Array, hp: dict) -> tuple[TrainState, dict]:
        n = x.shape[0]
        idx, valid, keys = self._batch_plan(jax.random.fold_in(jax.random.key(hp["seed"]), state.epoch), n)
        lr = self._learning_rate(state.epoch, hp)  # StepLR, per epoch
        state = self._with_learning_rate(state, lr)

        def body(st, inputs):
            i, v, k = inputs
            return self._train_step(st, (*self._shard_batch(x[i], y[i], v), k), hp)

        state, metrics = jax.lax.scan(body, state, (idx, valid, keys))
        totals = jax.tree.map(lambda m: jnp.sum(m, axis=0), metrics)
        sizes = jnp.asarray(self.config.sizes)
        summary = {
            "train_loss": totals["loss"] / n,
            "train_accuracy": totals["correct"] / n,
            "train_correct": totals["correct"],  # (reports take the exact fraction of the count: `_fraction`)
            "train_silent_fraction": totals["silent"] / (n * sizes),
            "bumps": totals["bumps"],
            "dropped_columns": totals["dropped"],
            "learning_rate": lr,
        }
        return state._replace(epoch=state.epoch + 1), summary

    def _evaluate(self, params: dict, x: jax.Array, y: jax.Array, hp: dict, on_substrate: bool) -> dict:
        """Loss, accuracy, per-layer silent fractions and activity over a split (eval-sized chunks).

        On the substrate the jitter of sample ``i`` depends only on the chip seed and ``i``.
        """
        cfg = self.config
        n = x.shape[0]
        chunk = min(cfg.eval_batch_size, n)
        n_chunks = math.ceil(n / chunk)
        pad = n_chunks * chunk - n
        xp = jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad, x.shape[1]))]).reshape(n_chunks, chunk, -1)
        yp = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)]).reshape(n_chunks, chunk)
        eval_key = jax.random.fold_in(jax.random.key(hp["substrate"]["seed"]), 1)
        kp = jax.vmap(jax.random.fold_in, (None, 0))(eval_key, jnp.arange(n_chunks * chunk)).reshape(n_chunks, chunk)

        def run(args):
            xc, yc, kc = self._shard_batch(*args) if chunk % self.n_devices == 0 else args
            times = self.forward_batch(params, xc, hp, kc if on_substrate else None)
            losses = jax.vmap(self.loss_fn, in_axes=(0, 0, None))(times[-1], yc, hp)
            return losses, jax.vmap(is_correct)(times[-1], yc), times

        losses, correct, times = jax.lax.map(run, (xp, yp, kp))
        valid = jnp.arange(n_chunks * chunk) < n
        losses, correct = losses.reshape(-1), correct.reshape(-1)
        times = [t.reshape(n_chunks * chunk, -1)[:n] for t in times]
        return {
            "loss": jnp.sum(jnp.where(valid, losses, 0.0)) / n,
            "accuracy": jnp.sum(correct & valid) / n,
            "correct": jnp.sum(correct & valid),  # (reports take the exact fraction of the count: `_fraction`)
            "silent_fraction": jnp.stack([jnp.mean(~jnp.isfinite(t)) for t in times]),
            **activity(x, times, len(cfg.bias_times)),
            "times": times,  # every layer's spike times [n, n_layer] (for figures; stays on device)
        }


def activity(x: jax.Array, times: list[jax.Array], n_bias: int) -> dict[str, jax.Array]:
    """Per-image activity of a split: ``x [n, n_in]`` inputs, ``times`` every layer's ``[n, n_layer]``.

    ``decision_time``: mean time of the first output spike over the images with one (the answer is
    known then; 0 if no image has one), ``decided_fraction``: the fraction of images with one;
    ``spikes_per_neuron``: per layer; ``synaptic_events``: mean spikes delivered per image (every
    input, bias and hidden spike times the size of the layer it feeds).
    """
    first = jnp.min(times[-1], axis=1)
    decided = jnp.isfinite(first)
    events = 0.0
    for source, target in zip([x, *times[:-1]], times):
        sent = jnp.sum(jnp.isfinite(source), axis=1) + n_bias
        events = events + jnp.mean(sent.astype(x.dtype)) * target.shape[1]
    return {
        "decision_time": jnp.sum(jnp.where(decided, first, 0.0)) / jnp.maximum(jnp.sum(decided), 1).astype(x.dtype),
        "decided_fraction": jnp.mean(decided.astype(x.dtype)),
        "spikes_per_neuron": jnp.stack([jnp.mean(jnp.isfinite(t).astype(x.dtype)) for t in times]),
        "synaptic_events": events,
    }


def _data_mesh(config: Config) -> Mesh | None:
    """A one-axis (``data``) mesh over the first ``config.devices`` devices, or ``None`` for one device."""
    available = jax.devices()
    n = config.devices or len(available)
    if n > len(available):
        raise ConfigError(
            f"config key `devices` is {n} but only {len(available)} device(s) are visible; set it to at most "
            f"{len(available)} (0 = all). On a CPU the command line shows N <= {os.cpu_count()} cores as N devices; "
            "in Python call `jax.config.update('jax_num_cpu_devices', N)` before JAX runs."
        )
    if config.batch_size % n:
        raise ConfigError(
            f"config key `batch_size` ({config.batch_size}) must be divisible by the number of devices ({n})."
        )
    if n == 1:
        return None
    return jax.make_mesh((n,), ("data",), devices=available[:n], axis_types=(jax.sharding.AxisType.Auto,))


def sharded_search(mesh: Mesh | None):
    """Programs split over several devices trace with the XLA search (`fsnn.core.spike_time.xla_search`:
    the native CPU kernel's call would be gathered onto every device)."""
    return spike_time.xla_search(mesh is not None and mesh.size > 1)


def _enable_dtype(config: Config) -> None:
    """float64 runs need JAX's x64 mode (switched on, never off)."""
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)


def wait_for(tree):
    """``tree`` once the device has computed it. Unlike reading values, `jax.block_until_ready` lets
    Ctrl-C and SIGTERM through while it waits: an interrupted run saves its last finished epoch at
    once instead of after the running one (a scheduler's grace period may be shorter than an epoch)."""
    return jax.block_until_ready(tree)


def _to_python(tree) -> Any:
    return jax.tree.map(lambda a: np.asarray(a).tolist(), tree)


def _fraction(correct: ArrayLike, n: int) -> Any:
    """Counts of correct answers (device integers, any shape) as Python floats ``correct / n``: exactly
    0.959, where the compiled float32 division gives 0.95899999 (or, in float64, 0.9590000000000001)."""
    return (np.asarray(correct, np.int64) / n).tolist()


def _epoch_row(summary: dict, n: int) -> dict[str, Any]:
    """An epoch's (`Trainer.train_epoch`) summary as Python values, with the exact training accuracy."""
    row = _to_python(summary)
    row["train_accuracy"] = _fraction(row.pop("train_correct"), n)
    return row


def train_and_evaluate(
    config: Config,
    workdir: str | Path,
    *,
    resume: bool = False,
    quiet: bool = False,
    data_dir: str | Path | None = None,
    figures: bool = True,
) -> dict[str, Any]:
    """Train ``config`` and write config, per-epoch metrics, checkpoints and results to ``workdir``.

    With ``resume=True`` training continues from the latest checkpoint in ``workdir`` and ends with
    exactly the weights an uninterrupted run would have (the data order and noise of epoch ``e``
    depend only on ``(seed, e)``). ``data_dir`` holds the original image files (see `load_data`).
    With ``figures`` the standard figures (`fsnn.plot.save_figures`) go to ``workdir/figures``.
    """
    _enable_dtype(checked_config(config))
    trainer = Trainer(config)  # device and batch checks fail here, before anything is written
    workdir = Path(workdir)
    with claim_workdir(workdir):
        return _train_and_evaluate(trainer, workdir, resume, quiet, data_dir, figures)


def claim_workdir(workdir: Path) -> contextlib.AbstractContextManager[None]:
    """Holds ``workdir`` (created if missing) for this process while it trains or sweeps into it.

    A second run into the same folder fails at once with a `ConfigError` naming the holder, before
    it writes anything: it would otherwise overwrite the first's config and metrics and mix its
    checkpoints with the first's. The claim ends with the process, however it ends. In a
    multi-host run (``--distributed``) the first process claims the folder for all of them.
    """
    if jax.process_index() != 0:
        return contextlib.nullcontext()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file of that name, no permission, a read-only filesystem
        raise ConfigError(f"cannot use `workdir` {workdir} ({err.strerror}); choose another --workdir.") from None

    def busy(pid: str) -> ConfigError:
        return ConfigError(
            f"`workdir` {workdir} is in use by another fsnn process (pid {pid}); wait for it to finish "
            "or choose another --workdir."
        )

    return locks.exclusive(workdir / ".lock", busy=busy)


def _train_and_evaluate(
    trainer: Trainer, workdir: Path, resume: bool, quiet: bool, data_dir: str | Path | None, figures: bool
) -> dict[str, Any]:
    config = trainer.config
    ckpt_dir = workdir / "checkpoints"
    config_file, metrics_file = workdir / "config.json", workdir / "metrics.jsonl"
    if (workdir / "configs.json").exists():
        raise ConfigError(
            f"`workdir` {workdir} holds a sweep (`fsnn sweep`), not a run: choose a new --workdir "
            f"(a run of the sweep is `fsnn eval/plot {workdir} --run I`)."
        )
    has_run = ckpt_dir.exists() and any(ckpt_dir.iterdir())
    if has_run and not resume:
        raise ConfigError(
            f"`workdir` {workdir} already holds a run; pass --resume to continue it or choose a new --workdir."
        )
    if resume and config_file.exists():
        # Keys added to Config after the run was written take their defaults.
        saved = json.loads(saved_configs(config_file)[0].to_json())
        mine = json.loads(config.to_json())
        diff = sorted(k for k in mine if k != "epochs" and saved.get(k) != mine[k])
        if diff:
            raise ConfigError(
                f"--resume with a different config (keys {diff}); use the saved config or a new --workdir."
            )
    workdir.mkdir(parents=True, exist_ok=True)
    data = trainer.place(load_data(config, data_dir, quiet=quiet))
    state = trainer.init_state()
    if resume and has_run:
        state = checkpoint.restore_latest(ckpt_dir, state)
        if int(state.epoch) > config.epochs:
            raise ConfigError(
                f"--resume: the run in {workdir} is checkpointed at epoch {int(state.epoch)}, past `epochs` "
                f"({config.epochs}); give --epochs {int(state.epoch)} (re-evaluates it) or more."
            )
    start_epoch = int(state.epoch)
    history = []
    if metrics_file.exists() and start_epoch > 0:
        history = [h for h in checkpoint.read_jsonl(metrics_file) if h["epoch"] <= start_epoch]
    # Only once data, checkpoint and log are read: a failed start changes nothing.
    checkpoint.write_atomic(config_file, config.to_json())
    checkpoint.write_atomic(metrics_file, "".join(json.dumps(h) + "\n" for h in history))
    state = trainer.place(state)

    x_train, y_train = data["train"]
    x_val, y_val = data["validation"]
    progress = _progress(config.epochs, start_epoch, quiet)
    t0 = time.perf_counter()
    best_val = max((h["val_accuracy"] for h in history), default=0.0)
    val = None
    logged = state  # the state of the last epoch in metrics.jsonl
    try:
        for epoch in range(start_epoch, config.epochs):
            e0 = time.perf_counter()
            state, summary = trainer.train_epoch(state, x_train, y_train)
            val = wait_for(trainer.evaluate(state.params, x_val, y_val))
            row = {"epoch": epoch + 1, **_epoch_row(summary, x_train.shape[0])}
            row.update(val_loss=float(val["loss"]), val_accuracy=_fraction(val["correct"], x_val.shape[0]))
            row["val_silent_fraction"] = _to_python(val["silent_fraction"])
            row["seconds"] = time.perf_counter() - e0
            if row["val_accuracy"] > best_val and config.select_best:
                checkpoint.save(workdir / "best", state)
            best_val = max(best_val, row["val_accuracy"])
            with metrics_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
            logged = state
            if config.checkpoint_every and (epoch + 1) % config.checkpoint_every == 0:
                checkpoint.save(ckpt_dir, state)
            if progress is not None:
                progress.set_postfix(
                    loss=f"{row['train_loss']:.3f}",
                    train=f"{row['train_accuracy']:.3f}",
                    val=f"{row['val_accuracy']:.3f}",
                )
                progress.update(1)
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM under the command line: keep the epochs done
        if int(logged.epoch) > start_epoch:
            checkpoint.save(ckpt_dir, logged)
        epoch = int(logged.epoch)  # (start_epoch was restored: it is checkpointed too)
        saved = f"epochs 1-{epoch} are checkpointed: the same command with --resume continues."
        if not epoch:
            saved = "no epoch had ended, nothing is checkpointed: the same command starts the run again."
        raise checkpoint.Interrupted(epoch, saved) from interrupt
    # the whole run's: a resumed run adds the seconds of its earlier epochs (metrics.jsonl)
    train_seconds = time.perf_counter() - t0 + sum(h.get("seconds", 0.0) for h in history)
    if progress is not None:
        progress.close()
    if val is not None and not quiet:
        _note_if_never_stepped(row["bumps"], math.ceil(x_train.shape[0] / config.batch_size))
    checkpoint.save(ckpt_dir, state)

    test = trainer.evaluate(state.params, *data["test"])
    if val is None:  # nothing trained in this call (resumed at the last epoch)
        val = trainer.evaluate(state.params, x_val, y_val)
    n_test = data["test"][0].shape[0]
    chosen = {"final_test_accuracy": _fraction(test["correct"], n_test)}
    reported = state  # the weights whose test results (and figures) are reported
    if config.select_best and (workdir / "best").exists():
        reported = trainer.place(checkpoint.restore_latest(workdir / "best", state))
        test = trainer.evaluate(reported.params, *data["test"])
        chosen["best_epoch"] = int(reported.epoch)
    results = {
        "test_accuracy": _fraction(test["correct"], n_test),
        **chosen,
        "test_loss": float(test["loss"]),
        "val_accuracy": _fraction(val["correct"], x_val.shape[0]),
        "best_val_accuracy": best_val,
        "epochs": config.epochs,
        "train_seconds": train_seconds,
        "train_samples_per_second": config.epochs * x_train.shape[0] / train_seconds,
        "seed": config.seed,
        "test_silent_fraction": _to_python(test["silent_fraction"]),
        **{f"test_{k}": v for k, v in activity_summary(test, config.substrate_tau_us).items()},
        "device": jax.devices()[0].device_kind,
    }
    if not config.substrate.is_ideal:  # the same weights on the other side too
        on_chip, ideal = trainer.both_sides(reported.params, *data["test"], test)
        results.update(
            substrate_test_accuracy=_fraction(on_chip["correct"], n_test),
            ideal_test_accuracy=_fraction(ideal["correct"], n_test),
        )
        results.update(
            {f"substrate_test_{k}": v for k, v in activity_summary(on_chip, config.substrate_tau_us).items()}
        )
    checkpoint.write_atomic(workdir / "results.json", json.dumps(results, indent=2))
    if figures:  # from the test evaluation above: no extra compilation
        from fsnn.plot import read_metrics, save_figures

        kernels = [np.asarray(reported.params["layers"][i]["kernel"]) for i in range(trainer.n_layers)]
        x_test, y_test = data["test"]
        times = [np.asarray(t) for t in test["times"]]
        save_figures(workdir, read_metrics(workdir), kernels, np.asarray(x_test), times, np.asarray(y_test))
    return results


def _note_if_never_stepped(bumps: list[int], batches: int) -> None:
    """Say so on stderr when weight bumping took every batch of the last epoch (``bumps`` per layer):
    no optimizer step was taken, and the run's metrics alone do not tell why nothing is learnt."""
    if sum(bumps) >= batches:
        layers = ", ".join(str(i + 1) for i, b in enumerate(bumps) if b)
        print(
            f"fsnn: note: every batch of the last epoch was bumped (layer {layers}), so none took an optimizer "
            "step: that layer stays too silent for `max_missing` whatever its weights (an `init` far too small, "
            "or a substrate whose `substrate_weight_max` cannot reach threshold?).",
            file=sys.stderr,
        )


def activity_summary(evaluation: dict, tau_us: float) -> dict[str, Any]:
    """The `activity` of an evaluation as JSON values, the decision time also in (emulated) µs (both
    ``None`` when no image has an output spike: `activity`'s stand-in 0 would read as instant)."""
    decided = float(evaluation["decided_fraction"]) > 0
    decision = float(evaluation["decision_time"]) if decided else None
    return {
        "decision_time": decision,
        "decision_time_us": decision * tau_us if decided else None,
        "decided_fraction": float(evaluation["decided_fraction"]),
        "spikes_per_neuron": _to_python(evaluation["spikes_per_neuron"]),
        "synaptic_events": float(evaluation["synaptic_events"]),
    }


def _progress(total: int, initial: int, quiet: bool, label: str = ""):
    """A bar in a terminal or a notebook (both show tqdm's carriage returns in place); in a log
    file (a batch job) a line now and then; nothing when ``quiet``. ``label`` names what trains."""
    if quiet:
        return None
    if shows_bars():
        from tqdm.std import tqdm  # (tqdm.notebook would need ipywidgets)

        return tqdm(total=total, initial=initial, unit="epoch", dynamic_ncols=True, desc=label or None)
    return _EpochLines(total, initial, label)


class _EpochLines:
    """Progress for a log (stderr not a terminal): the first epoch, then one line every
    `_LOG_SECONDS`, and the last; the same calls as a tqdm bar."""

    def __init__(self, total: int, initial: int, label: str = ""):
        self.total, self.n, self.postfix, self.label = total, initial, {}, f"{label}: " if label else ""
        self.start, self.printed = time.perf_counter(), None

    def set_postfix(self, values: dict[str, str] | None = None, **more: str) -> None:
        self.postfix = {**(values or {}), **more}

    def update(self, n: int) -> None:
        self.n += n
        now = time.perf_counter()
        if self.printed is None or now - self.printed >= _LOG_SECONDS or self.n == self.total:
            self.printed = now
            values = "".join(f", {k} {v}" for k, v in self.postfix.items())
            line = f"{self.label}epoch {self.n}/{self.total}{values} ({now - self.start:.1f} s)"
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def restore_run(
    workdir: str | Path, *, best: bool = False, run: int | None = None
) -> tuple[Config, Trainer, TrainState]:
    """The config, a trainer and the latest checkpointed state of a run directory.

    ``best``: the best-validation state instead, which runs with ``select_best`` keep in
    ``workdir/best`` as they go (so an interrupted run has one too). A sweep directory needs
    ``run``, the index of one of its runs (`fsnn.train.sweep.restore_sweep_run`).
    """
    workdir = Path(workdir)
    if run is not None or (workdir / "configs.json").is_file():
        from fsnn.train.sweep import restore_sweep_run

        return restore_sweep_run(workdir, run, best=best)
    config_file = workdir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: is {workdir} a run directory written by `fsnn train`?")
    config = saved_configs(config_file)[0]
    _enable_dtype(config)
    directory = workdir / ("best" if best else "checkpoints")
    if best and not directory.is_dir():
        raise FileNotFoundError(
            f"{directory} not found: only runs with `select_best=true` keep their best-validation state; "
            "evaluate the latest checkpoint instead (without --best)."
        )
    trainer = Trainer(config)
    state = checkpoint.restore_latest(directory, trainer.init_state())
    return config, trainer, state


def evaluate_run(
    workdir: str | Path, *, data_dir: str | Path | None = None, best: bool = False, run: int | None = None
) -> dict[str, Any]:
    """Re-evaluate the latest (or, with ``best``, the best-validation) checkpoint of a run directory
    (of run ``run`` of a sweep directory) on its validation and test sets."""
    config, trainer, state = restore_run(workdir, best=best, run=run)
    data = load_data(config, data_dir)
    out = {"epoch": int(state.epoch)}
    for split in ("validation", "test"):
        res, n = trainer.evaluate(state.params, *data[split]), data[split][0].shape[0]
        out[f"{split}_accuracy"] = _fraction(res["correct"], n)
        out[f"{split}_loss"] = float(res["loss"])
        if not config.substrate.is_ideal:
            on_chip, ideal = trainer.both_sides(state.params, *data[split], res)
            out[f"substrate_{split}_accuracy"] = _fraction(on_chip["correct"], n)
            out[f"ideal_{split}_accuracy"] = _fraction(ideal["correct"], n)
    return out
