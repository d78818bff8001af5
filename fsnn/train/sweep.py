"""Many runs in one compiled program: the training epoch ``jax.vmap``-ped over stacked runs.

Runs that differ only in `DYNAMIC_KEYS` (seed, learning-rate schedule, loss parameters, weight
initialisation, remedy settings, threshold, ...) share a compiled program: their parameters,
optimizer states and `hyperparameters` are stacked along a leading ``run`` axis. Runs that differ in
anything that changes shapes or code (sizes, batch size, dataset, solver, epochs, ...) are grouped,
one compiled program per group. Each run ends with the weights it would have had when trained alone
(`tests/test_sweep.py`). The stacked runs are spread over the visible devices, or ``devices`` of
them (a ``runs`` mesh axis; `jax.shard_map` gives each device its runs whole, so nothing is
communicated and each device runs the one-device program, native CPU kernel included): several
GPUs, or the cores of a CPU shown to JAX as devices (`fsnn sweep --devices N`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fsnn import xla
from fsnn.train import checkpoint
from fsnn.train.config import (
    MAX_SEED,
    Config,
    ConfigError,
    apply_overrides,
    checked_config,
    grid_values,
    saved_configs,
)
from fsnn.train.loop import (
    DYNAMIC_KEYS,
    Trainer,
    TrainState,
    _enable_dtype,
    _epoch_row,
    _fraction,
    _progress,
    _to_python,
    claim_workdir,
    hyperparameters,
    load_data,
    resolved_solver,
    standard_normal_kernels,
    wait_for,
)

__all__ = ["expand_grid", "group_key", "sweep", "summarize", "format_summary", "restore_sweep_run", "sweep_run_metrics"]

# keys handled outside the compiled program (per run, or not at all in a sweep)
_HOST_SIDE = ("name", "checkpoint_every", "select_best", "substrate_tau_us")


def expand_grid(base: Config, seeds: int, grid: dict[str, Sequence[Any]]) -> list[Config]:
    """Every combination of the ``grid`` values, each with seeds ``base.seed, ..., base.seed + seeds - 1``.

    Values are parsed and validated like ``--set`` values (`apply_overrides`), so a bad value
    fails here, before anything is compiled. A string or a number alone is one value (``{"loss":
    "mse"}``, not the values "m", "s", "e"); a setting listed twice is refused.
    """
    checked_config(base, "base")
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1; got {seeds}.")
    if "seed" in grid:
        raise ConfigError("sweep the seed with --seeds N (seeds base.seed .. base.seed + N - 1), not --set seed=...")
    if base.seed + seeds - 1 > MAX_SEED:
        raise ConfigError(
            f"--seeds {seeds} from seed {base.seed} reaches seed {base.seed + seeds - 1}, past the largest, "
            f"2**31 - 1; start at --seed {MAX_SEED + 1 - seeds} or lower."
        )
    configs, settings = [], set()
    for combo in itertools.product(*map(grid_values, grid.values())):
        setting = apply_overrides(base, dict(zip(grid, combo)))
        if setting in settings:  # (a value listed twice trained its runs twice and counted them twice)
            named = ", ".join(f"{key}={getattr(setting, key)}" for key in grid)
            raise ConfigError(f"--set lists the setting {named} twice; list each value once.")
        settings.add(setting)
        configs.extend(dataclasses.replace(setting, seed=base.seed + s) for s in range(seeds))
    return configs


def group_key(config: Config) -> str:
    """Equal for configs that one compiled program can train together."""
    dynamic = set(DYNAMIC_KEYS) | set(_HOST_SIDE)
    if resolved_solver(config) == "root":  # the closed forms fix tau_m / tau_s at compile time
        dynamic |= {"tau_m", "tau_s"}
    fixed = {k: v for k, v in dataclasses.asdict(config).items() if k not in dynamic}
    fixed["_code"] = {
        "solver": resolved_solver(config),
        "input_noise": config.input_noise > 0,
        "max_dw_norm": config.max_dw_norm is not None,
        "chip_solver": config.substrate_variation > 0,  # varied neurons need the root solver
        "quantized": config.substrate_weight_bits is not None,
    }
    return json.dumps(fixed, sort_keys=True)


def _groups(configs: list[Config]) -> list[list[int]]:
    """The indices of ``configs`` by compiled program (group ``G``), in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(group_key(config), []).append(i)
    return list(groups.values())


def _initial_runs(trainer: Trainer, configs: list[Config]) -> tuple[dict, TrainState]:
    """The stacked hyperparameters and initial states of one group's ``configs``."""
    hps = _stack([hyperparameters(c) for c in configs])
    normals = _stack([standard_normal_kernels(c) for c in configs])
    return hps, jax.vmap(trainer.init_state)(hps, normals)


def _snapshot(runs, best_params, best_val, best_epoch, *, n: int) -> dict[str, Any]:
    """What a group's checkpoint holds: the ``n`` real runs' states and best-validation weights."""
    # (float64 whatever the run: the exact fractions of `_fraction`, compared again on resume)
    best = {"best_val": np.asarray(best_val, np.float64), "best_epoch": np.asarray(best_epoch, np.int32)}
    return {"runs": _first(runs, n), "best_params": _first(best_params, n), **best}


def _stack(trees: list) -> Any:
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _unstack(tree, i: int) -> Any:
    return jax.tree.map(lambda a: a[i], tree)


def _runs_mesh(devices: int) -> Mesh | None:
    """A one-axis (``runs``) mesh over the first ``devices`` devices (0 = all), ``None`` for one."""
    available = jax.devices()
    n = devices or len(available)
    if devices < 0 or n > len(available):
        hint = ""
        if jax.default_backend() == "cpu":
            hint = " (CPU cores become devices by `jax.config.update('jax_num_cpu_devices', N)` before JAX runs)"
        raise ConfigError(
            f"--devices must be 0 (all) or 1..{len(available)}, the visible devices{hint}; got {devices}."
        )
    if n == 1:
        return None
    return jax.make_mesh((n,), ("runs",), devices=available[:n], axis_types=(jax.sharding.AxisType.Auto,))


def _spread(tree, mesh: Mesh | None, n_runs: int) -> Any:
    """Pad the run axis to a multiple of the mesh size (repeating the last run) and shard it."""
    if mesh is None:
        return tree
    pad = -n_runs % mesh.size
    sharding = NamedSharding(mesh, PartitionSpec("runs"))
    return jax.device_put(
        jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) if pad else a, tree), sharding
    )


def _first(tree, n_runs: int) -> Any:
    """The real runs of a padded stack."""
    return jax.tree.map(lambda a: a[:n_runs], tree)


def _swept_keys(configs: list[Config], base: Config) -> list[str]:
    """The keys (seed excluded) that differ between the configs or from ``base``."""
    values = [dataclasses.asdict(c) for c in [base, *configs]]
    return [k for k in values[0] if k != "seed" and any(v[k] != values[0][k] for v in values)]


class _Programs(NamedTuple):
    trainer: Trainer
    train_epoch: Any  # vmapped over runs
    evaluate: dict[bool, Any]  # on_substrate -> vmapped evaluation


_PROGRAMS: dict[str, _Programs] = {}  # by `group_key`: later sweeps in this process reuse the compilations
_MAX_PROGRAMS = 8


def _per_device(f, mesh: Mesh | None):
    """``f`` (vmapped over runs; arguments: per-run, data, data, per-run) run by every device of
    ``mesh`` on its own runs (`jax.shard_map`): each device's program is the one-device program, so
    the native CPU kernel stays in it and nothing is communicated."""
    if mesh is None:
        return f
    runs, shared = PartitionSpec("runs"), PartitionSpec()
    # check_vma=False: the custom VJPs of the core do not mark their cotangents as varying per device
    return jax.shard_map(f, mesh=mesh, in_specs=(runs, shared, shared, runs), out_specs=runs, check_vma=False)


def _programs(config: Config, mesh: Mesh | None = None) -> _Programs:
    """The (jitted, vmapped over runs) programs of ``config``'s group on ``mesh``, built once per process."""
    key = group_key(dataclasses.replace(config, epochs=1))  # the epoch count is a host loop, not code
    key += f"|{None if mesh is None else (mesh.devices.tolist(), mesh.axis_names)}"
    if key not in _PROGRAMS:
        while len(_PROGRAMS) >= _MAX_PROGRAMS:
            _PROGRAMS.pop(next(iter(_PROGRAMS)))
        trainer = Trainer(config)

        def program(f):
            return xla.jit(_per_device(jax.vmap(f, in_axes=(0, None, None, 0)), mesh))

        evaluate = {side: program(functools.partial(trainer._evaluate, on_substrate=side)) for side in (False, True)}
        _PROGRAMS[key] = _Programs(trainer, program(trainer._train_epoch), evaluate)
    return _PROGRAMS[key]


def _train_group(
    configs: list[Config],
    data_dir,
    quiet: bool,
    log,
    ckpt_dir: Path | None,
    mesh: Mesh | None = None,
    group: tuple[int, int] = (0, 1),
) -> tuple[list[dict[str, Any]], TrainState, float]:
    """Train ``configs`` (one group) together; per-run results, the stacked final state, seconds.

    With ``ckpt_dir`` the group's progress (stacked states, best-validation weights) is saved there
    every ``checkpoint_every`` epochs and at the end, and training continues from the latest save.
    With ``mesh`` the runs are sharded over its devices (`_spread`); checkpoints hold the real runs
    only, so a sweep resumes on any number of devices. ``group`` (index, count) names the group in
    the progress and in the `checkpoint.Interrupted` that Ctrl-C raises once the epochs done are saved.
    """
    first = configs[0]
    if first.devices != 1:
        raise ConfigError(
            "config key `devices` (batches sharded) must be 1 in a sweep; `fsnn sweep --devices N` spreads the runs."
        )
    _enable_dtype(first)
    trainer, train_epoch, evaluators = _programs(first, mesh)
    evaluate = evaluators[first.in_the_loop]
    n = len(configs)
    hps, runs = _initial_runs(trainer, configs)
    data = load_data(first, data_dir, quiet=quiet)
    if mesh is not None:
        data = jax.device_put(data, NamedSharding(mesh, PartitionSpec()))
    (x_train, y_train), (x_val, y_val) = data["train"], data["validation"]
    best_val, best_epoch, best_params = np.full(n, -1.0), np.zeros(n, np.int64), runs.params
    snapshot = functools.partial(_snapshot, n=n)

    if ckpt_dir is not None and checkpoint.latest_epoch(ckpt_dir) is not None:
        saved = checkpoint.restore_latest(ckpt_dir, snapshot(runs, best_params, best_val, best_epoch))
        runs, best_params = saved["runs"], saved["best_params"]
        best_val, best_epoch = np.asarray(saved["best_val"], np.float64), np.asarray(saved["best_epoch"], np.int64)
    hps, runs, best_params = _spread((hps, runs, best_params), mesh, n)
    start = int(runs.epoch[0])
    g, groups = group
    label = (f"group {g + 1}/{groups}, " if groups > 1 else "") + f"{n} run{'s' * (n != 1)}"
    progress = _progress(first.epochs, start, quiet, label)
    t0 = time.perf_counter()
    val = None
    logged = runs, best_params, best_val, best_epoch  # as of the last epoch in metrics.jsonl
    try:
        for epoch in range(start, first.epochs):
            e0 = time.perf_counter()
            runs, summary = train_epoch(runs, x_train, y_train, hps)
            val = wait_for(evaluate(runs.params, x_val, y_val, hps))
            val_accuracy = np.asarray(_fraction(val["correct"], x_val.shape[0]))[:n]
            better = val_accuracy > best_val  # ties keep the earlier epoch, as in `train_and_evaluate`
            if better.any():
                padded = np.pad(better, (0, len(val["accuracy"]) - n))  # padding runs (`_spread`): never kept

                def keep_better(new, old, better=jnp.asarray(padded)):
                    return jnp.where(better.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

                best_params = jax.tree.map(keep_better, runs.params, best_params)
            best_epoch = np.where(better, epoch + 1, best_epoch)
            best_val = np.maximum(best_val, val_accuracy)
            row = {**summary, "val_loss": val["loss"], "val_silent_fraction": val["silent_fraction"]}
            log(
                {
                    "epoch": epoch + 1,
                    **_epoch_row(_first(row, n), x_train.shape[0]),
                    "val_accuracy": val_accuracy.tolist(),
                    "seconds": time.perf_counter() - e0,
                }
            )
            logged = runs, best_params, best_val, best_epoch
            last = epoch + 1 == first.epochs
            if ckpt_dir is not None and (
                last or (first.checkpoint_every and (epoch + 1) % first.checkpoint_every == 0)
            ):
                checkpoint.save(ckpt_dir, snapshot(*logged), step=epoch + 1)
            if progress is not None:
                progress.set_postfix({"mean val": f"{val_accuracy.mean():.3f}"})
                progress.update(1)
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM under the command line: keep the epochs done
        if ckpt_dir is None:
            raise
        logged = jax.device_get(logged)  # on the host: a device computation would wait for the running epoch
        epoch = int(logged[0].epoch[0])
        if epoch > start:
            checkpoint.save(ckpt_dir, snapshot(*logged), step=epoch)
        raise checkpoint.Interrupted(epoch, _saved(g, groups, epoch)) from interrupt
    seconds = time.perf_counter() - t0
    if progress is not None:
        progress.close()
    if val is None:  # resumed after its last epoch
        val = evaluate(runs.params, x_val, y_val, hps)
    any_best = any(c.select_best for c in configs)
    final = evaluate(runs.params, *data["test"], hps)
    chosen = evaluate(best_params, *data["test"], hps) if any_best else final
    other_final = other_chosen = None
    if any(not c.substrate.is_ideal for c in configs):  # the same weights on the other side too
        evaluate_other = evaluators[not first.in_the_loop]
        other_final = evaluate_other(runs.params, *data["test"], hps)
        other_chosen = evaluate_other(best_params, *data["test"], hps) if any_best else other_final
    n_test, n_val = data["test"][0].shape[0], x_val.shape[0]
    rows = []
    for i, config in enumerate(configs):
        use_best = config.select_best
        test = chosen if use_best else final
        row = {
            "test_accuracy": _fraction(test["correct"][i], n_test),
            "final_test_accuracy": _fraction(final["correct"][i], n_test),
            "test_loss": float(test["loss"][i]),
            "val_accuracy": _fraction(val["correct"][i], n_val),
            "best_val_accuracy": float(best_val[i]),
            # a neuron spikes at most once: the spike count per neuron is the fraction that fired
            "spikes_per_neuron": [1.0 - s for s in _to_python(test["silent_fraction"][i])],
        }
        if use_best:
            row["best_epoch"] = int(best_epoch[i])
        if other_final is not None:
            other = other_chosen if use_best else other_final
            on_chip, ideal = (test, other) if config.in_the_loop else (other, test)
            row["substrate_test_accuracy"] = _fraction(on_chip["correct"][i], n_test)
            row["ideal_test_accuracy"] = _fraction(ideal["correct"][i], n_test)
        rows.append(row)
    return rows, _first(runs, n), seconds


def _prepare_workdir(workdir: Path, configs: list[Config], resume: bool) -> None:
    """Check ``workdir`` against ``configs`` (never overwrite; resume only the same sweep), write
    ``configs.json`` and keep the metrics lines of the epochs each group's checkpoint holds."""
    configs_file, metrics_file = workdir / "configs.json", workdir / "metrics.jsonl"
    if (workdir / "config.json").exists():
        raise ConfigError(f"`workdir` {workdir} holds a run of `fsnn train`, not a sweep: choose a new --workdir.")
    if (configs_file.exists() or (workdir / "sweep.json").exists()) and not resume:
        raise ConfigError(
            f"`workdir` {workdir} already holds a sweep; pass --resume to continue it or choose a new --workdir."
        )
    done: dict[int, int] = {}
    if resume and configs_file.exists():
        saved = saved_configs(configs_file)
        # `epochs` may grow (continue training); keys added to Config since take their defaults
        same = len(saved) == len(configs) and all(
            dataclasses.replace(a, epochs=b.epochs) == b and b.epochs >= a.epochs for a, b in zip(saved, configs)
        )
        if not same:
            raise ConfigError(
                f"--resume with different runs than the sweep in {workdir} ({len(saved)} saved, {len(configs)} "
                "now, other settings or fewer epochs); use the same --seeds/--set values or a new --workdir."
            )
        for ckpt in (workdir / "checkpoints").glob("group-*"):
            done[int(ckpt.name.split("-")[1])] = checkpoint.latest_epoch(ckpt) or 0
    rows = checkpoint.read_jsonl(metrics_file) if metrics_file.exists() and done else []
    kept = [row for row in rows if row["epoch"] <= done.get(row["group"], 0)]
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint.write_atomic(configs_file, json.dumps([json.loads(c.to_json()) for c in configs], indent=1))
    checkpoint.write_atomic(metrics_file, "".join(json.dumps(row) + "\n" for row in kept))


def sweep(
    configs: Sequence[Config],
    workdir: str | Path | None = None,
    *,
    base: Config | None = None,
    quiet: bool = False,
    data_dir: str | Path | None = None,
    resume: bool = False,
    devices: int = 0,
) -> tuple[list[dict[str, Any]], list[TrainState]]:
    """Train every config, vmapping runs that share a compiled program; one result row per config.

    With ``workdir``, writes ``configs.json`` (every run's config), ``metrics.jsonl`` (per epoch and
    group, every run's metrics as lists), checkpoints per group under ``checkpoints/group-G`` (every
    ``checkpoint_every`` epochs and at the end) and ``sweep.json`` (base config, one row per run:
    the keys that differ from ``base`` or between runs, test / validation accuracy, spikes per
    neuron, training seconds of its group over all calls). ``resume=True`` continues an interrupted
    sweep of the same runs (``epochs`` may grow) from its checkpoints and ends exactly as an
    uninterrupted one.
    ``devices`` (default 0: all visible) spreads each group's runs over that many devices. Returns the
    rows and every run's final `TrainState`, in the order of ``configs``.
    """
    configs = [checked_config(c, "configs[]") for c in configs]
    if not configs:
        raise ConfigError("nothing to sweep: no configs.")
    mesh = _runs_mesh(devices)
    base = base or configs[0]
    keys = _swept_keys(configs, base)
    workdir = Path(workdir) if workdir is not None else None
    with contextlib.nullcontext() if workdir is None else claim_workdir(workdir):  # one sweep per workdir
        if workdir is not None:
            _prepare_workdir(workdir, configs, resume)
        rows: list[dict[str, Any]] = [{} for _ in configs]
        states: list[Any] = [None] * len(configs)
        earlier = {}  # seconds of the epochs that a resumed sweep trained before, per group
        if workdir is not None:
            for row in checkpoint.read_jsonl(workdir / "metrics.jsonl"):
                earlier[row["group"]] = earlier.get(row["group"], 0.0) + row.get("seconds", 0.0)
        groups = _groups(configs)
        for g, indices in enumerate(groups):

            def log(row, g=g):
                if workdir is not None:
                    with (workdir / "metrics.jsonl").open("a") as f:
                        f.write(json.dumps({"group": g, **row}) + "\n")

            ckpt_dir = None if workdir is None else workdir / "checkpoints" / f"group-{g}"
            group_rows, stacked, seconds = _train_group(
                [configs[i] for i in indices], data_dir, quiet, log, ckpt_dir, mesh, (g, len(groups))
            )
            for j, i in enumerate(indices):
                rows[i] = {
                    "run": i,
                    "group": g,
                    "config": {**{k: getattr(configs[i], k) for k in keys}, "seed": configs[i].seed},
                    **group_rows[j],
                    "group_runs": len(indices),
                    "group_train_seconds": seconds + earlier.get(g, 0.0),
                }
                states[i] = _unstack(stacked, j)
        if workdir is not None:
            report = {"base": dataclasses.asdict(base), "runs": rows, "summary": summarize(rows)}
            checkpoint.write_atomic(workdir / "sweep.json", json.dumps(report, indent=2))
        return rows, states


def _saved(group: int, groups: int, epoch: int) -> str:
    """What an interrupted sweep kept, for `checkpoint.Interrupted`: group ``group`` (counted from 0)
    of ``groups`` was checkpointed at ``epoch``, those before it had finished."""
    name = f" of group {group + 1}/{groups}" if groups > 1 else ""
    saved = [f"epochs 1-{epoch}{name} are checkpointed" if epoch else f"no epoch{name} had ended"]
    if group:
        saved.append(f"groups 1-{group} are done" if group > 1 else "group 1 is done")
    return ", ".join(saved) + ": the same command with --resume continues."


def _run_of(workdir: Path, run: int | None) -> tuple[list[Config], int, list[int]]:
    """The configs of the sweep in ``workdir``, and the group of ``run`` with its runs' indices."""
    configs_file = workdir / "configs.json"
    if not configs_file.is_file():
        if (workdir / "config.json").is_file():
            raise ConfigError(f"{workdir} holds one run of `fsnn train`, not a sweep: leave out --run.")
        raise FileNotFoundError(f"{configs_file} not found: is {workdir} a sweep directory written by `fsnn sweep`?")
    configs = saved_configs(configs_file)
    if run is None or not 0 <= run < len(configs):
        raise ConfigError(
            f"{workdir} holds a sweep of {len(configs)} runs: choose one with --run I, 0 <= I < {len(configs)} "
            f"(the `run` of its row in sweep.json)" + ("." if run is None else f"; got {run}.")
        )
    g, indices = next((g, indices) for g, indices in enumerate(_groups(configs)) if run in indices)
    return configs, g, indices


def restore_sweep_run(
    workdir: str | Path, run: int | None, *, best: bool = False
) -> tuple[Config, Trainer, TrainState]:
    """The config, a trainer and the latest checkpointed state of run ``run`` of a sweep directory
    (its index in ``configs.json``, the ``run`` of its row in ``sweep.json``).

    ``best``: its best-validation weights and epoch instead (runs with ``select_best``); the
    optimizer state stays the latest.
    """
    workdir = Path(workdir)
    configs, g, indices = _run_of(workdir, run)
    config = configs[run]
    if best and not config.select_best:
        raise FileNotFoundError(
            f"run {run} of {workdir} has `select_best=false`, so the sweep kept no best-validation weights "
            "for it; evaluate its latest checkpoint instead (without --best)."
        )
    _enable_dtype(config)
    trainer = Trainer(config)
    group = [configs[i] for i in indices]
    _, runs = _initial_runs(trainer, group)
    like = _snapshot(runs, runs.params, np.zeros(len(group)), np.zeros(len(group)), n=len(group))
    saved = checkpoint.restore_latest(workdir / "checkpoints" / f"group-{g}", like)
    j = indices.index(run)
    state = _unstack(saved["runs"], j)
    if best:
        state = state._replace(params=_unstack(saved["best_params"], j), epoch=jnp.asarray(saved["best_epoch"][j]))
    return config, trainer, state


def sweep_run_metrics(workdir: str | Path, run: int | None) -> list[dict[str, Any]]:
    """The per-epoch metrics of run ``run`` of a sweep directory, as ``fsnn train`` writes them."""
    workdir = Path(workdir)
    _, g, indices = _run_of(workdir, run)
    j = indices.index(run)
    rows = []
    for row in checkpoint.read_jsonl(workdir / "metrics.jsonl"):
        if row.get("group") == g:
            shared = {k: row[k] for k in ("epoch", "seconds") if k in row}  # the group's (older sweeps: no seconds)
            per_run = {k: v[j] for k, v in row.items() if k not in ("group", *shared)}
            rows.append({"val_loss": math.nan, **shared, **per_run})  # older sweeps logged no val_loss
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting (the config without its seed): number of seeds and test accuracy statistics."""
    settings: dict[str, list[dict]] = {}
    for row in rows:
        setting = {k: v for k, v in row["config"].items() if k != "seed"}
        settings.setdefault(json.dumps(setting, sort_keys=True), []).append(row)
    out = []
    for key, group in settings.items():
        acc = [r["test_accuracy"] for r in group]
        spikes = np.mean([r["spikes_per_neuron"] for r in group], axis=0)
        out.append(
            {
                "setting": json.loads(key),
                "seeds": len(acc),
                "test_accuracy_mean": statistics.fmean(acc),
                "test_accuracy_std": statistics.pstdev(acc),
                "test_accuracy_min": min(acc),
                "test_accuracy_max": max(acc),
                "spikes_per_neuron": spikes.tolist(),
            }
        )
    return out


def _as_given(value: Any) -> Any:
    """A setting's value as --set takes it: JSON's lists as tuples (``hidden=(20,)``, not ``[20]``)."""
    return tuple(_as_given(v) for v in value) if isinstance(value, list) else value


def format_summary(summary: list[dict[str, Any]]) -> str:
    """A plain-text table: one line per setting, accuracies in %."""
    lines = [f"{'setting':<40} {'seeds':>5} {'test acc (mean ± std)':>22} {'min':>6} {'max':>6}  spikes/neuron"]
    for s in summary:
        name = ", ".join(f"{k}={_as_given(v)}" for k, v in s["setting"].items()) or "(base)"
        spikes = "/".join(f"{v:.2f}" for v in s["spikes_per_neuron"])
        lines.append(
            f"{name:<40} {s['seeds']:>5} {100 * s['test_accuracy_mean']:>14.2f} ± {100 * s['test_accuracy_std']:<5.2f}"
            f" {100 * s['test_accuracy_min']:>6.2f} {100 * s['test_accuracy_max']:>6.2f}  {spikes}"
        )
    return "\n".join(lines)
