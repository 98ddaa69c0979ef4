"""Training configuration: a TOML file read into frozen dataclasses.

    python -m ich_keras.fit --config configs/demo.toml --set train.epochs=3 --set model.name=coatnet_tiny

Every section and key is declared below with its type and default; an unknown section or key, or a value of the
wrong type, is an error that names it and lists the allowed keys. `--set section.key=value` overrides parse the
value as TOML (`--set data.source="digits"` and `--set data.source=digits` both work: a bare word is a string).
The resolved config is saved as `config.json` in the run directory and read back with `config_from_dict`.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

from ich_keras.errors import UserError, relative_to_cwd
from ich_keras.ranking import METRIC_MODES
from ich_keras.typed_tables import check_fields, from_table, table_values

# Tables a config file may hold for other commands than fit, each with the command that reads it (its recipe).
COMMAND_SECTIONS = {"soup": "python -m ich_keras.soup", "analysis": "python -m ich_keras.analyze"}
# `train.precision` -> the Keras dtype policy fit trains under.
PRECISION_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how the splits are made.

    `source` is an ImageFolder directory `DIR/{train,val,test}/<class>/*` (relative paths resolve against the
    working directory), "digits" (scikit-learn's embedded 8x8 digits, upsampled) or "tfds:NAME".
    Without a `val/` split, `val_fraction` (or `val_count` when > 0) of train is carved out, stratified and seeded
    by `split_seed`; without a `test/` split, `test_fraction` is carved out the same way (digits has neither). A
    carved image with a copy left in train (`ich_keras.copies`: the same bytes, or with `near_copies` a re-encoded,
    resized, recoloured or mirrored copy) stays in train with it.
    `max_per_class` > 0 keeps a seeded random subset of each class in every split (for quick runs and tests).
    """

    source: str = "digits"
    image_size: int = 224
    val_fraction: float = 0.1
    val_count: int = 0
    test_fraction: float = 0.2
    split_seed: int = 0
    max_per_class: int = 0
    skip_bad_images: bool = False
    # Copies of one picture are files with the same bytes and, with this, near copies (thumbnails correlating >= 0.95).
    # False where different objects are photographed alike (coins, or objects on one plain background, one framing).
    near_copies: bool = True
    # Decoded, resized images kept in memory after the first epoch: right for datasets of a few thousand images.
    cache: bool = True
    # Parallel decode calls; 0 lets tf.data tune it.
    workers: int = 0


@dataclass(frozen=True)
class AugmentConfig:
    """Train-time augmentation; val and test images are only decoded, resized and normalised.

    Per batch, with probability `mix_prob`, either CutMix (probability `switch_prob`) or MixUp is applied, as in
    timm's `Mixup`; an alpha of 0 disables that kind. Every augmentation but `rand_augment` is a pure function of
    (train.seed, epoch), so a resumed run sees the batches an uninterrupted one would; RandAugment (keras'
    stateful layer) draws differently after a resume.
    """

    flip: bool = True
    random_resized_crop: bool = False
    crop_scale_min: float = 0.08
    rand_augment: bool = False
    rand_augment_magnitude: float = 0.5
    mixup_alpha: float = 0.2
    cutmix_alpha: float = 1.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5


@dataclass(frozen=True)
class ModelConfig:
    """`name` is a key of `ich_keras.models.MODELS`; `init` an optional `.weights.h5` file to start from (its
    head is re-initialised when its class count differs)."""

    name: str = "coatnet_tiny"
    init: str = ""
    # The new head's seed when `init` has another class count; not train.seed's: runs from one init with other
    # seeds start from one point (one head), as model soups and the merges from W0 average them.
    head_seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation. Epochs count passes over the train split; the learning rate follows cosine annealing with
    warm restarts every `restart_epochs` (times `restart_t_mul` after each restart), after an optional linear
    warmup, and is updated at every optimizer update (not every epoch)."""

    epochs: int = 50
    batch_size: int = 32
    # The effective batch is batch_size * grad_accum_steps; one optimizer update per grad_accum_steps batches.
    grad_accum_steps: int = 1
    learning_rate: float = 1e-4
    min_learning_rate: float = 0.0
    weight_decay: float = 1e-3
    warmup_epochs: float = 0.0
    restart_epochs: float = 3.0
    restart_t_mul: float = 1.0
    restart_m_mul: float = 1.0
    # 0 disables clipping.
    global_clipnorm: float = 1.0
    # "float32", "bfloat16" (mixed_bfloat16) or "float16" (mixed_float16, with loss scaling).
    precision: str = "float32"
    label_smoothing: float = 0.0
    ema: bool = False
    ema_momentum: float = 0.999
    seed: int = 0
    # "none" or "data_parallel" (keras.distribution.DataParallel over every device; across processes and hosts:
    # ich_keras/distributed.py).
    distribution: str = "none"
    # 0 means one pass over the train split.
    steps_per_epoch: int = 0


@dataclass(frozen=True)
class KeepRule:
    """Keep the `k` best epochs by validation `metric`, best meaning lowest (`mode="min"`: loss) or highest
    ("max": accuracy, precision, recall, f1); a mode the other way round is an error."""

    metric: str = "loss"
    mode: str = "min"
    k: int = 8


@dataclass(frozen=True)
class CheckpointConfig:
    keep: tuple[KeepRule, ...] = (
        KeepRule("loss", "min", 8),
        KeepRule("accuracy", "max", 8),
        KeepRule("f1", "max", 8),
    )


@dataclass(frozen=True)
class LogConfig:
    # Keras progress: 0 silent, 1 a progress bar on a terminal (one line per epoch where stderr is a file or a
    # pipe), 2 one line per epoch.
    verbose: int = 1
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "ich_keras"
    # "offline" writes to RUN_DIR/wandb for a later `wandb sync` (nothing leaves the machine); "online" needs a login.
    wandb_mode: str = "offline"


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self):
        check_fields(self)  # a config built in Python; `config_from_dict` has checked a table's types already
        _validate(self)


def _check(condition: bool, key: str, value, requirement: str):
    if not condition:
        raise UserError(f"Config key {key} must be {requirement}. Received: {key}={value!r}")


def _validate(cfg: Config):
    """Range checks that types alone cannot express; each error names the key."""
    d, a, t = cfg.data, cfg.augment, cfg.train
    _check(bool(d.source.strip()), "data.source", d.source, 'a folder, "digits" or "tfds:NAME"')
    _check(d.image_size >= 8, "data.image_size", d.image_size, ">= 8")
    _check(0.0 <= d.val_fraction < 1.0, "data.val_fraction", d.val_fraction, "in [0, 1)")
    _check(d.val_count >= 0, "data.val_count", d.val_count, ">= 0")
    _check(0.0 <= d.test_fraction < 1.0, "data.test_fraction", d.test_fraction, "in [0, 1)")
    _check(d.max_per_class >= 0, "data.max_per_class", d.max_per_class, ">= 0 (0 keeps all)")
    _check(d.workers >= 0, "data.workers", d.workers, ">= 0 (0 tunes automatically)")
    # Seeds as keras.utils.set_random_seed takes them. What derives from them stays valid: numpy's default_rng
    # takes any seed >= 0 (data.py carves and caps with split_seed .. split_seed + 4), and the pipeline wraps
    # train.seed + epoch into RandAugment's uint32 range.
    _check(0 <= d.split_seed < 2**32, "data.split_seed", d.split_seed, "in [0, 2**32)")
    _check(0 <= t.seed < 2**32, "train.seed", t.seed, "in [0, 2**32)")
    _check(0 <= cfg.model.head_seed < 2**32, "model.head_seed", cfg.model.head_seed, "in [0, 2**32)")
    _check(0.0 < a.crop_scale_min <= 1.0, "augment.crop_scale_min", a.crop_scale_min, "in (0, 1]")
    for key in ("mixup_alpha", "cutmix_alpha"):
        _check(getattr(a, key) >= 0.0, f"augment.{key}", getattr(a, key), ">= 0 (0 disables it)")
    for key in ("mix_prob", "switch_prob", "rand_augment_magnitude"):
        _check(0.0 <= getattr(a, key) <= 1.0, f"augment.{key}", getattr(a, key), "in [0, 1]")
    _check(bool(cfg.model.name), "model.name", cfg.model.name, "a model name")
    for key in ("epochs", "batch_size", "grad_accum_steps"):
        _check(getattr(t, key) >= 1, f"train.{key}", getattr(t, key), ">= 1")
    _check(t.learning_rate > 0, "train.learning_rate", t.learning_rate, "> 0")
    _check(
        0 <= t.min_learning_rate <= t.learning_rate,
        "train.min_learning_rate",
        t.min_learning_rate,
        f"in [0, train.learning_rate={t.learning_rate}]",
    )
    _check(t.restart_epochs > 0, "train.restart_epochs", t.restart_epochs, "> 0")
    _check(t.restart_t_mul > 0, "train.restart_t_mul", t.restart_t_mul, "> 0")
    _check(t.restart_m_mul > 0, "train.restart_m_mul", t.restart_m_mul, "> 0 (a negative one makes the rate negative)")
    _check(t.warmup_epochs >= 0, "train.warmup_epochs", t.warmup_epochs, ">= 0")
    _check(t.global_clipnorm >= 0, "train.global_clipnorm", t.global_clipnorm, ">= 0 (0 disables it)")
    _check(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, ">= 0 (0 disables it)")
    _check(0.0 <= t.label_smoothing < 1.0, "train.label_smoothing", t.label_smoothing, "in [0, 1)")
    _check(0.0 < t.ema_momentum < 1.0, "train.ema_momentum", t.ema_momentum, "in (0, 1)")
    _check(t.steps_per_epoch >= 0, "train.steps_per_epoch", t.steps_per_epoch, ">= 0 (0 is one pass)")
    _check(t.precision in PRECISION_POLICIES, "train.precision", t.precision, f"one of {tuple(PRECISION_POLICIES)}")
    distributions = ("none", "data_parallel")
    _check(t.distribution in distributions, "train.distribution", t.distribution, f"one of {distributions}")
    _check(cfg.log.verbose in (0, 1, 2), "log.verbose", cfg.log.verbose, "0, 1 or 2")
    _check(
        cfg.log.wandb_mode in ("offline", "online"), "log.wandb_mode", cfg.log.wandb_mode, "offline or online"
    )

    keep = cfg.checkpoint.keep
    _check(len(keep) >= 1, "checkpoint.keep", keep, "a non-empty list of {metric, mode, k} tables")
    seen = set()
    for i, rule in enumerate(keep):
        key = f"checkpoint.keep[{i}]"
        # The metrics `ich_keras.evaluation.evaluate` returns as macro scalars, each with the way it improves.
        _check(rule.metric in METRIC_MODES, f"{key}.metric", rule.metric, f"one of {tuple(METRIC_MODES)}")
        best = METRIC_MODES[rule.metric]
        _check(rule.mode == best, f"{key}.mode", rule.mode,
               f'"{best}" for {rule.metric} (the other way would keep the worst epochs)')
        _check(rule.k >= 1, f"{key}.k", rule.k, ">= 1")
        _check(rule.metric not in seen, f"{key}.metric", rule.metric, "listed once")
        seen.add(rule.metric)


def config_from_dict(data: dict) -> Config:
    """Builds a validated `Config` from nested dicts (parsed TOML or a saved `config.json`).

    Args:
        data: {section: {key: value}}; missing keys take their defaults.

    Returns:
        The frozen `Config`. Unknown keys, wrong types and out-of-range values raise `UserError` (a ValueError)
        naming the key.
    """
    if not isinstance(data, dict):  # a config.json edited into a list or a string
        raise UserError(f"A config must be a table of sections. Received: {type(data).__name__} {data!r:.80}")
    return from_table(Config, data)


def override_key(override: str) -> str:
    """The key of a "section.key=value" override, as written ("train.epochs"); unchecked."""
    return override.split("=", 1)[0].strip()


def override_section(override: str) -> str:
    """The section of a "section.key=value" override ("train"); unchecked."""
    return override_key(override).split(".")[0]


def parse_override(override: str) -> tuple[list[str], object]:
    """"section.key=value" as ([section, key], value): the value parsed as TOML, as text for a text key."""
    if "=" not in override:
        raise UserError(f"An override must look like section.key=value. Received: override={override!r}")
    key, text = override.split("=", 1)
    path = key.strip().split(".")
    if len(path) != 2 or not all(path):
        raise UserError(f"An override key must be section.key. Received: key={key.strip()!r}")
    value = parse_value(text)
    if not isinstance(value, str) and _is_text(*path):
        value = text.strip()  # data.source=2024 is a folder named 2024, model.name=1e3 a name
    return path, value


def _is_text(section: str, name: str) -> bool:
    """Whether `section.name` is a text key of `Config` (False for keys it does not have)."""
    table = typing.get_type_hints(Config).get(section)
    if not dataclasses.is_dataclass(table):
        return False
    return typing.get_type_hints(table).get(name) in (str, str | None)


def parse_value(text: str):
    """A value written on the command line: TOML if it parses (`3e-4`, `true`, `[1, 2]`), else the text itself, so
    that bare words such as coatnet_tiny or ../data need no quotes."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Returns a copy of nested config dicts with `section.key=value` overrides applied (validated later)."""
    data = json.loads(json.dumps(data))
    for override in overrides:
        (section, name), value = parse_override(override)
        if not isinstance(data.setdefault(section, {}), dict):
            raise UserError(f"Config section {section!r} must be a table. Received: override={override!r}")  # noqa: TRY004
        data[section][name] = value
    return data


def recipe_table(options_class, section: str, path: str | Path | None, overrides: list[str] = ()) -> dict:
    """A command's recipe: the [section] table of the TOML file `path` (None: none) with the `section.KEY=VALUE`
    among `overrides` applied, as {field: value} checked against `options_class`'s fields and types (an unknown key
    is a `UserError` naming it); fields given nowhere are absent."""
    own = [o for o in overrides if override_section(o) == section]
    tables = read_toml(path, own) if path else apply_overrides({}, own)
    table = tables.get(section, {})
    if not isinstance(table, dict):
        raise UserError(f"[{section}] must be a table of options. Received: {section}={table!r}")
    return table_values(options_class, table, section)


def _not_toml_hint(path: Path) -> str:
    """What a file that is no TOML config may be instead: a run's config.json, or a YAML or JSON config."""
    if path.name == "config.json" and (path.parent / "classes.json").is_file():
        return f"; it is a run's config: continue that run with --resume {path.parent}"
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        return f"; configs are TOML files (configs/*.toml; docs/config.md), not {path.suffix.lstrip('.').upper()}"
    return ""


def read_toml(path: str | Path, overrides: list[str] = ()) -> dict:
    """A TOML file as nested dicts with `section.key=value` overrides applied (not yet checked against a schema)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"The config path is a folder; pass a TOML file (e.g. configs/demo.toml). "
                        f"Received: path={str(path)!r}")
    if not path.is_file():
        raise UserError(f"Config file not found{relative_to_cwd(path)}. Received: path={str(path)!r}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))  # TOML files are UTF-8 by the spec
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"Config file is not valid TOML ({error}){_not_toml_hint(path)}. "
                        f"Received: path={str(path)!r}") from None
    return apply_overrides(data, list(overrides))


def load_config(path: str | Path, overrides: list[str] = (), passed_on: tuple[str, ...] = ()) -> Config:
    """Reads a TOML config file and applies `--set` overrides.

    The tables of other commands (`COMMAND_SECTIONS`: a soup or analysis recipe kept beside the training config)
    are left to those commands, which check them against their own options.

    Args:
        path: the TOML file.
        overrides: strings "section.key=value"; the value is parsed as TOML, a bare word as a string.
        passed_on: the sections of `COMMAND_SECTIONS` whose overrides the caller hands on to their command (the
            sweep's soup.KEY=VALUE go to the soups it cooks). An override of another such section would be dropped
            unread, so it is a `UserError` naming the command that reads it.

    Returns:
        The validated, frozen `Config`.
    """
    for override in overrides:
        section = override_section(override)
        if section in COMMAND_SECTIONS and section not in passed_on:
            raise UserError(f"A --set key must be a training config key; [{section}] is another command's table "
                            f"({COMMAND_SECTIONS[section]} reads it). Received: --set {override}")
    data = read_toml(path, overrides)
    return config_from_dict({k: v for k, v in data.items() if k not in COMMAND_SECTIONS})


def config_to_dict(cfg: Config) -> dict:
    """Nested plain dicts and lists, JSON-ready; `config_from_dict` reads them back to an equal `Config`."""
    return dataclasses.asdict(cfg)
