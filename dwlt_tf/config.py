"""Config sections (ml_collections) -> the library's typed specs, validated at the boundary.

Every config in `configs/` is plain data. This module turns its sections into
`data.DataSpec`, `train.TrainSpec`, `imp.ImpSpec` and `ModelSpec`, rejecting unknown
keys and bad values before any work starts, with messages that name the offending key
and value (e.g. "dataset.data_rate=1.5: must be in (0, 1]").
"""
import dataclasses
from typing import Optional

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)

from dwlt_tf import attacks, data, imp, models, train
from dwlt_tf.errors import ConfigError  # noqa: F401  (re-exported: config.ConfigError)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    arch: str = "resnet50"
    stem: str = "imagenet"
    base_width: int = 64
    sync_batchnorm: bool = False

    def __post_init__(self):
        if self.arch not in models.ARCHS:
            raise ConfigError(f"model.arch={self.arch!r}: choose one of {sorted(models.ARCHS)}")
        if self.stem not in models.STEMS:
            raise ConfigError(f"model.stem={self.stem!r}: choose one of {list(models.STEMS)}")
        if isinstance(self.base_width, bool) or not isinstance(self.base_width, int) \
                or self.base_width < 1:
            raise ConfigError(f"model.base_width={self.base_width!r}: must be a positive int")

    def build(self, num_classes, mean, std):
        return models.build_resnet(self.arch, num_classes, self.stem, mean, std,
                                   self.base_width, self.sync_batchnorm)


def to_dict(section):
    """A ConfigDict (or dict) as plain nested Python containers."""
    if hasattr(section, "to_dict"):
        section = section.to_dict()
    if isinstance(section, dict):
        return {k: to_dict(v) for k, v in section.items()}
    if isinstance(section, (list, tuple)):
        return [to_dict(v) for v in section]
    return section


def _fields(cls, values, where, rename=None):
    """kwargs for dataclass `cls` from `values`, rejecting unknown keys by name."""
    rename = rename or {}
    allowed = {f.name for f in dataclasses.fields(cls)} | set(rename)
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {sorted(allowed)})")
    return {rename.get(k, k): v for k, v in values.items()}


def _wrap(where, fn, *args, **kwargs):
    """Calls a spec constructor, prefixing its ValueError with the config section."""
    try:
        return fn(*args, **kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        text = str(e)
        if not text.startswith(where):
            text = f"{where}: {text}"
        raise ConfigError(text) from None


def model_spec(section) -> ModelSpec:
    values = to_dict(section)
    return _wrap("model", ModelSpec, **_fields(ModelSpec, values, "model"))


def data_spec(section, where="dataset") -> data.DataSpec:
    values = to_dict(section)
    values = {k: v for k, v in values.items()}
    if values.get("classes") is not None:
        values["classes"] = tuple(values["classes"])
    for key in ("data_dir", "path", "stats"):
        if values.get(key) == "":
            values[key] = None
    kwargs = _fields(data.DataSpec, values, where)
    try:
        return data.DataSpec(**kwargs)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def attack_spec(section, where) -> Optional[attacks.Attack]:
    """An attack from {eps, step_size, steps[, random_start]}; None/{} -> no attack."""
    values = to_dict(section)
    if not values:
        return None
    if isinstance(values, str):
        return _wrap(where, attacks.preset, values)
    kwargs = _fields(attacks.Attack, values, where)
    return _wrap(where, attacks.Attack, **kwargs)


def train_spec(section, where="train") -> train.TrainSpec:
    values = dict(to_dict(section))
    if "attack" in values:
        values["attack"] = attack_spec(values["attack"], f"{where}.attack")
    if "eval_attack" in values:
        values["eval_attack"] = attack_spec(values["eval_attack"], f"{where}.eval_attack")
    if "milestones" in values:
        values["milestones"] = tuple(values["milestones"] or ())
    kwargs = _fields(train.TrainSpec, values, where)
    if kwargs.get("mode") == "standard":
        kwargs["attack"] = None  # the attack section only matters to adversarial modes
    try:
        return train.TrainSpec(**kwargs)
    except ValueError as e:
        text = str(e).replace("train.", f"{where}.", 1)
        raise ConfigError(text) from None


def imp_spec(section, where="imp") -> imp.ImpSpec:
    values = {k: v for k, v in to_dict(section).items() if k != "train"}
    kwargs = _fields(imp.ImpSpec, values, where)
    try:
        return imp.ImpSpec(**kwargs)
    except ValueError as e:
        raise ConfigError(str(e).replace("imp.", f"{where}.", 1)) from None


def check_keys(section, allowed, where):
    unknown = sorted(set(to_dict(section)) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {sorted(allowed)})")
