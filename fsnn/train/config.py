"""Experiment configuration: a frozen dataclass, validated before anything is compiled."""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import json
import math
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fsnn.core.neuron import LIFParams
from fsnn.data.images import SPLIT_SIZES as IMAGE_SPLIT_SIZES
from fsnn.data.yinyang import SPLIT_SIZES as YINYANG_SPLIT_SIZES
from fsnn.substrate import Substrate, check_substrate

MAX_SEED = 2**31 - 1  # JAX keys are made from 32-bit seeds (seed and substrate_seed >= -2**31 too)

__all__ = ["Config", "ConfigError", "load_config", "apply_overrides", "saved_configs", "EXPERIMENTS_DIR"]


class ConfigError(ValueError):
    """A config, command-line or run-directory problem the user can fix (the message says how)."""


def checked_config(config: Config, name: str = "config") -> Config:
    """``config``, which must be a `Config` (a dict of values fails here, not deep inside)."""
    if not isinstance(config, Config):
        fix = "Config(**values)" if isinstance(config, dict) else "load_config(name) or Config(...)"
        raise TypeError(f"`{name}` must be an fsnn.train.Config ({fix}); got {type(config).__name__}.")
    return config


def _experiments_dir() -> Path:
    """The experiment configs: installed, the copy inside the package; in a checkout, ``experiments/``."""
    here = Path(__file__).resolve()
    installed = here.parents[1] / "_experiments"  # pyproject.toml maps experiments/ to fsnn._experiments
    return installed if installed.is_dir() else here.parents[2] / "experiments"


EXPERIMENTS_DIR = _experiments_dir()
# dataset: (inputs, classes); image datasets end in "16" for the 16 x 16 encoding
DATASETS = {
    "yinyang": (4, 3),
    "mnist": (784, 10),
    "mnist16": (256, 10),
    "fashion_mnist": (784, 10),
    "fashion_mnist16": (256, 10),
}
LOSSES = ("ttfs", "mse")
SOLVERS = ("auto", "lambertw", "quadratic", "root")
DTYPES = ("float32", "float64")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run depends on. Times are in units of tau_s. See `experiments/yinyang.py`."""

    name: str = "yinyang"
    dataset: str = "yinyang"
    train_size: int = 0  # 0 = the whole split (positive values cut it, for smoke runs)
    eval_size: int = 0
    t_early: float = 0.15
    t_late: float = 2.0
    # network
    hidden: tuple[int, ...] = (120,)
    init: tuple[tuple[float, float], ...] = ((1.5, 0.8), (0.5, 0.8))
    bias_times: tuple[float, ...] = (0.9,)
    tau_m: float = 1.0
    tau_s: float = 1.0
    threshold: float = 1.0
    g_leak: float = 1.0
    e_leak: float = 0.0
    trainable_neuron: tuple[str, ...] = ()
    per_neuron: bool = False
    # the learned neuron parameters step with this multiple of the learning rate (the weights with
    # the learning rate itself; 0 freezes them); no effect without `trainable_neuron`
    neuron_lr_scale: float = 1.0
    solver: str = "auto"
    dtype: str = "float32"
    # loss (on output times in units of the output layer's tau_s: xi, beta, mse_targets scale with it)
    loss: str = "ttfs"
    xi: float = 0.2
    alpha: float = 0.005
    beta: float = 1.0
    silent_loss: float = 10.0
    mse_targets: tuple[float, float] = (1.5, 2.5)
    # optimisation
    learning_rate: float = 0.005
    lr_step: int = 20
    lr_gamma: float = 0.95
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    # inside the square root of Adam's denominator: keeps d sqrt(v)/dv finite where a gradient entry
    # is exactly 0 (silent neurons), which hypergradients through training need; below float32's
    # resolution of any nonzero second moment, so ordinary training is unaffected
    adam_eps_root: float = 1e-20
    batch_size: int = 150  # larger than the training set: one batch of the whole set
    eval_batch_size: int = 200
    epochs: int = 300
    input_noise: float = 0.0
    # training images translated by up to this many pixels in each direction (uniform, per sample
    # and step; the border takes the background); image datasets only
    augment_shift: int = 0
    # training images mirrored left to right with probability 1/2 (per sample and step); for
    # datasets whose classes are mirror-symmetric (clothes, not digits)
    augment_flip: bool = False
    # each hidden spike removed for the next layer with this probability (per sample, neuron and
    # step; that layer's input weights times 1 / (1 - p) meanwhile); training only, not evaluation
    dropout: float = 0.0
    # remedies
    weight_bumping: bool = True
    bump_value: float = 5e-4
    max_missing: tuple[float, ...] = (0.3, 0.0)
    bump_output: str = "label"
    max_dw_norm: float | None = 0.2
    # model selection: test the weights of the best validation epoch (saved under WORKDIR/best/)
    select_best: bool = False
    # emulated analog substrate (`fsnn.substrate`; the defaults are the ideal model): per-neuron
    # fixed-pattern variation of tau_m, tau_s, theta; weight magnitude bits (None = float; 6 = ±63
    # steps) and the largest step per layer (() = |init mean| + 3 init std); spike-time jitter;
    # Euler step (None = exact) and horizon; dead-neuron fraction; the chip's seed; µs per tau_s
    substrate_variation: float = 0.0
    substrate_weight_bits: int | None = None
    substrate_weight_max: tuple[float, ...] = ()
    substrate_jitter: float = 0.0
    substrate_dt: float | None = None
    substrate_t_max: float = 8.0
    substrate_dead_fraction: float = 0.0
    substrate_seed: int = 0
    substrate_tau_us: float = 6.0
    # train with the forward pass on the substrate and the ideal model's gradients at its spike
    # times (else: train the ideal model and test it on both)
    in_the_loop: bool = False
    # in the loop: floor of the model's membrane slope at the observed times, in (theta - E_l) / tau_s
    # (None: sqrt(eps)); bounds the gradient of spikes the model's membrane does not explain
    in_the_loop_min_slope: float | None = None
    # data parallelism: batches sharded over this many devices (0 = all visible), parameters replicated
    devices: int = 1
    # bookkeeping
    seed: int = 0  # a 32-bit integer, as is substrate_seed
    checkpoint_every: int = 50

    def __post_init__(self):
        # Python values are held to the field types as `--set` values are (lists and arrays become
        # tuples, NumPy/JAX numbers Python ones, a number a 1-tuple where a tuple is expected, ints
        # floats): `Config(hidden=[200])` trains, and `Config(epochs=2.0)` fails here, not in the run.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            object.__setattr__(self, field.name, _coerce(field.name, value, _hints()[field.name], parse=False))
        self.validate()

    @property
    def n_classes(self) -> int:
        return DATASETS[self.dataset][1]

    @property
    def n_inputs(self) -> int:
        return DATASETS[self.dataset][0]

    @property
    def sizes(self) -> tuple[int, ...]:
        return (*self.hidden, self.n_classes)

    @property
    def neuron(self) -> LIFParams:
        return LIFParams(self.tau_m, self.tau_s, self.threshold, self.g_leak, self.e_leak)

    @property
    def substrate(self) -> Substrate:
        """The emulated substrate of the ``substrate_*`` keys (``weight_max`` resolved per layer)."""
        return Substrate(
            variation=self.substrate_variation,
            weight_bits=self.substrate_weight_bits,
            weight_max=self.substrate_weight_max or tuple(abs(m) + 3 * s for m, s in self.init),
            jitter=self.substrate_jitter,
            dt=self.substrate_dt,
            t_max=self.substrate_t_max,
            dead_fraction=self.substrate_dead_fraction,
            seed=self.substrate_seed,
            tau_us=self.substrate_tau_us,
        )

    def validate(self) -> None:
        """Raise `ConfigError` naming the key and the allowed values for anything impossible."""

        def bad(key, why):
            raise ConfigError(f"config key `{key}` {why}")

        for field in dataclasses.fields(self):  # no nan or inf anywhere (tuples of tuples included)
            value = getattr(self, field.name)
            if any(isinstance(v, float) and not math.isfinite(v) for v in _leaves(value)):
                bad(field.name, f"must be finite; got {value}.")
        for key, allowed in (
            ("dataset", tuple(DATASETS)),
            ("loss", LOSSES),
            ("solver", SOLVERS),
            ("dtype", DTYPES),
            ("bump_output", ("label", "all")),
        ):
            if getattr(self, key) not in allowed:
                bad(key, f"must be one of {allowed}; got {getattr(self, key)!r}.")
        if not self.name or self.name in (".", "..") or any(c in self.name for c in "/\\\0"):  # (runs/NAME-seedS)
            bad(
                "name",
                f"names the run's default folder (runs/NAME-seedS) and must be one folder name; got {self.name!r}.",
            )
        for key in ("batch_size", "eval_batch_size", "epochs", "lr_step"):
            if getattr(self, key) < 1:
                bad(key, f"must be a positive integer; got {getattr(self, key)}.")
        for key in ("train_size", "eval_size", "checkpoint_every", "devices"):
            if getattr(self, key) < 0:
                bad(key, f"must be >= 0; got {getattr(self, key)}.")
        sizes = YINYANG_SPLIT_SIZES if self.dataset == "yinyang" else IMAGE_SPLIT_SIZES
        for key, most, splits in (
            ("train_size", sizes["train"], "train split"),
            ("eval_size", min(sizes["validation"], sizes["test"]), "validation and test splits"),
        ):
            value = getattr(self, key)
            if value > most:  # (a silently smaller run)
                bad(key, f"must be at most {most}, the size of {self.dataset}'s {splits} (0 = all); got {value}.")
        for key in ("seed", "substrate_seed"):
            if not -MAX_SEED - 1 <= getattr(self, key) <= MAX_SEED:
                bad(key, f"must be a 32-bit integer, -2**31 .. 2**31 - 1; got {getattr(self, key)}.")
        if any(h < 1 for h in self.hidden):
            bad("hidden", f"sizes must be positive integers; got {self.hidden}.")
        for key in ("tau_m", "tau_s", "g_leak", "learning_rate", "xi", "beta", "lr_gamma"):
            if not getattr(self, key) > 0:
                bad(key, f"must be > 0; got {getattr(self, key)}.")
        if not self.threshold > self.e_leak:
            bad("threshold", f"must exceed `e_leak` ({self.e_leak}); got {self.threshold}.")
        per_layer = {  # checked together: a new `hidden` changes every one of them
            "init": ("(mean, std) pairs", self.init),
            "max_missing": ("fractions", self.max_missing),
            "substrate_weight_max": ("values > 0, or () for |init mean| + 3 init std", self.substrate_weight_max),
        }
        wrong = [
            k for k, (_, v) in per_layer.items() if len(v) != len(self.sizes) and (v or k != "substrate_weight_max")
        ]
        if wrong:
            keys = ", ".join(f"`{k}` ({per_layer[k][0]})" for k in wrong)
            raise ConfigError(
                f"config key{'s' * (len(wrong) > 1)} {keys} need{'s' * (len(wrong) == 1)} one entry per layer, "
                f"{len(self.sizes)} for sizes {self.sizes} (`hidden`, then the output layer); got "
                + "; ".join(f"{k}={per_layer[k][1]}" for k in wrong)
                + "."
            )
        if any(len(pair) != 2 or pair[1] < 0 for pair in self.init):
            bad("init", f"entries must be (mean, std >= 0); got {self.init}.")
        if any(not 0 <= m <= 1 for m in self.max_missing):
            bad("max_missing", f"fractions must lie in [0, 1]; got {self.max_missing}.")
        if not 0 <= self.neuron_lr_scale < math.inf:
            bad("neuron_lr_scale", f"must be finite and >= 0; got {self.neuron_lr_scale}.")
        for key in ("alpha", "adam_eps", "adam_eps_root"):
            if getattr(self, key) < 0:
                bad(key, f"must be >= 0; got {getattr(self, key)}.")
        for key in ("adam_b1", "adam_b2"):
            if not 0 <= getattr(self, key) < 1:
                bad(key, f"is a decay rate in [0, 1); got {getattr(self, key)}.")
        if self.weight_bumping and not self.bump_value > 0:
            why = "must be > 0 with `weight_bumping` (a bumped batch takes no optimizer step)"
            bad("bump_value", f"{why}; got {self.bump_value}.")
        if self.input_noise < 0:
            bad("input_noise", f"must be >= 0; got {self.input_noise}.")
        if not 0 <= self.dropout < 1:
            bad("dropout", f"is a probability in [0, 1); got {self.dropout}.")
        if self.dropout and (self.trainable_neuron or self.in_the_loop or not self.hidden):
            bad(
                "dropout",
                "acts between the layers of first-order weight training on the ideal model (hidden layers, no "
                f"`trainable_neuron`, no `in_the_loop`); set it to 0 here; got {self.dropout}.",
            )
        side = math.isqrt(self.n_inputs)  # images are square
        if self.augment_shift and self.dataset == "yinyang":
            bad("augment_shift", f"translates images and must be 0 for yinyang; got {self.augment_shift}.")
        if self.augment_flip and self.dataset == "yinyang":
            bad("augment_flip", "mirrors images and must be False for yinyang.")
        if not 0 <= self.augment_shift < side:
            bad("augment_shift", f"must be a whole number of pixels in 0 .. {side - 1}; got {self.augment_shift}.")
        if self.max_dw_norm is not None and not self.max_dw_norm > 0:
            bad("max_dw_norm", f"must be > 0 or None (off); got {self.max_dw_norm}.")
        if not 0 <= self.t_early < self.t_late:
            bad("t_late", f"must exceed `t_early` >= 0; got {self.t_early}, {self.t_late}.")
        substrate = {
            k.removeprefix("substrate_"): v for k, v in dataclasses.asdict(self).items() if k.startswith("substrate_")
        }
        try:
            check_substrate(substrate, prefix="substrate_")
        except ValueError as err:
            raise ConfigError(f"config key {err}") from None
        if self.substrate_dt is not None and not self.substrate_dt < min(self.tau_m, self.tau_s):
            bad(
                "substrate_dt",
                f"(the Euler step) must be below `tau_m` and `tau_s` ({self.tau_m}, {self.tau_s}; a step >= tau makes "
                f"the decay factors 1 - dt / tau <= 0: the membrane oscillates); got {self.substrate_dt}.",
            )
        if self.in_the_loop_min_slope is not None and not self.in_the_loop_min_slope > 0:
            bad("in_the_loop_min_slope", f"must be > 0 or None (sqrt(eps)); got {self.in_the_loop_min_slope}.")
        unknown = set(self.trainable_neuron) - set(LIFParams._fields)
        if unknown:
            bad("trainable_neuron", f"holds {sorted(unknown)}; allowed: {LIFParams._fields}.")
        if self.solver in ("lambertw", "quadratic") and {"tau_m", "tau_s"} & set(self.trainable_neuron):
            bad("solver", "must be 'root' or 'auto' when time constants are trainable.")
        ratio = self.tau_m / self.tau_s
        if self.solver == "lambertw" and ratio != 1:
            bad("solver", f"'lambertw' needs tau_m == tau_s; got {self.tau_m}, {self.tau_s}. Use 'auto' or 'root'.")
        if self.solver == "quadratic" and ratio != 2:
            bad("solver", f"'quadratic' needs tau_m == 2 tau_s; got {self.tau_m}, {self.tau_s}. Use 'auto' or 'root'.")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        return apply_overrides(cls(), values)


def _leaves(value: Any):
    """The non-tuple values in ``value`` (itself, or the items of nested tuples)."""
    if isinstance(value, tuple):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(Config)


def _coerce(key: str, raw: Any, annotation: Any, parse: bool = True) -> Any:
    """Convert ``raw`` (a string from the command line, a JSON value or, without ``parse``, a Python
    value whose strings are taken as they are) to the field's type."""
    if parse and isinstance(raw, str):
        try:
            parsed = ast.literal_eval(raw)
            raw = parsed if annotation is not str or isinstance(parsed, str) else raw
        except (ValueError, SyntaxError):
            if raw in ("none", "None", "null"):
                raw = None
            elif raw in ("true", "false"):
                raw = raw == "true"
    try:
        return _convert(key, raw, annotation)
    except TypeError:  # the whole value and type named (not the part inside that failed)
        raise ConfigError(f"config key `{key}` expects {_describe(annotation)}; got {raw!r}.") from None


def _convert(key: str, raw: Any, annotation: Any) -> Any:
    """`_coerce` of a parsed value; a TypeError if it does not fit ``annotation``."""
    if hasattr(raw, "tolist") and not isinstance(raw, str):  # NumPy/JAX arrays and scalars: Python values
        raw = raw.tolist()
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is bool:
        if not isinstance(raw, bool):
            raise TypeError
        return raw
    if annotation is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise TypeError
        return raw
    if annotation is float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise TypeError
        return float(raw)
    if annotation is str:
        if not isinstance(raw, str):
            raise TypeError
        return raw
    if origin in (types.UnionType, typing.Union):  # float | None
        if raw is None:
            return None
        return _convert(key, raw, next(a for a in args if a is not type(None)))
    if origin is tuple:
        if isinstance(raw, (int, float, str)) and not isinstance(raw, bool):
            raw = (raw,)
        if not isinstance(raw, (list, tuple)):
            raise TypeError
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(key, r, args[0]) for r in raw)
        if len(raw) != len(args):
            raise TypeError
        return tuple(_convert(key, r, a) for r, a in zip(raw, args))
    raise ConfigError(f"config key `{key}` has an unsupported type {annotation}.")


def _describe(annotation) -> str:
    """``tuple[tuple[float, float], ...]``, ``float | None``, ``int``: the type as it is written."""
    plain = not typing.get_args(annotation) and getattr(annotation, "__name__", None)
    return plain or str(annotation).replace("typing.", "")


def apply_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """A new config with ``overrides`` (strings are parsed); unknown keys list the known ones."""
    checked_config(config)
    hints = _hints()
    fields = {f.name for f in dataclasses.fields(Config)}
    values = {}
    for key, raw in overrides.items():
        if key not in fields:
            raise ConfigError(f"unknown config key `{key}`; known keys: {', '.join(sorted(fields))}.")
        values[key] = _coerce(key, raw, hints[key])
    return dataclasses.replace(config, **values)


def load_config(experiment: str, *, smoke: bool = False) -> Config:
    """``get_config()`` (or ``get_smoke_config()``) of an experiment name or a Python file path."""
    path = Path(experiment)
    if path.suffix != ".py":
        named = EXPERIMENTS_DIR / f"{experiment}.py"
        if path.is_file() and not named.is_file():
            raise ConfigError(f"experiment file {path} is not a Python file; give a .py file with `get_config()`.")
        path = named
    if not path.is_file():
        known = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.py")) if EXPERIMENTS_DIR.is_dir() else []
        raise ConfigError(
            f"experiment `{experiment}` not found (looked for {path}); known: {', '.join(known) or 'none'}."
        )
    spec = importlib.util.spec_from_file_location(f"fsnn_experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    getter = "get_smoke_config" if smoke else "get_config"
    if not hasattr(module, getter):
        raise ConfigError(f"experiment file {path} defines no `{getter}()`.")
    config = getattr(module, getter)()
    if not isinstance(config, Config):
        raise ConfigError(f"`{getter}()` in {path} must return fsnn.train.Config; got {type(config).__name__}.")
    return config


def grid_values(value: Any) -> list[Any]:
    """The values a sweep or grid search lists for one key: a list, tuple or array of them, or one
    value alone (a string or number: ``"mse"``, not "m", "s", "e"). Lists may be ragged (no NumPy)."""
    alone = isinstance(value, str) or getattr(value, "ndim", None) == 0 or not isinstance(value, Iterable)
    return [value] if alone else list(value)


def saved_configs(path: Path) -> list[Config]:
    """The configs that fsnn saved in a run's ``config.json`` (one) or a sweep's ``configs.json`` (a
    list); keys added to `Config` since take their defaults. A file changed by hand so that it no
    longer reads back is a `ConfigError` that names it."""
    try:
        data = json.loads(Path(path).read_text())
        return [Config.from_dict(d) for d in (data if isinstance(data, list) else [data])]
    except (ValueError, TypeError, AttributeError) as err:  # bad JSON, keys or values
        raise ConfigError(
            f"{path} no longer reads back as fsnn wrote it ({err}); undo the change, or train into a new --workdir."
        ) from err
