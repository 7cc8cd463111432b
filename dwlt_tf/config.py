"""Config sections (ml_collections) -> the library's typed specs, validated at the boundary.

Every config in `configs/` is plain data. This module turns its sections into
`data.DataSpec`, `train.TrainSpec`, `imp.ImpSpec` and `ModelSpec`, rejecting unknown
keys and bad values before any work starts, with messages that name the offending key
and value (e.g. "dataset.data_rate=1.5: must be in (0, 1]").
"""
import dataclasses
from typing import Optional

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)

from dwlt_tf import attacks, checks, data, imp, models, train
from dwlt_tf.errors import ConfigError  # noqa: F401  (re-exported: config.ConfigError)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    arch: str = "resnet50"
    stem: str = "imagenet"
    base_width: int = 64
    sync_batchnorm: bool = False

    def __post_init__(self):
        checks.choice("model.arch", self.arch, sorted(models.ARCHS))
        checks.choice("model.stem", self.stem, models.STEMS)
        checks.positive_int("model.base_width", self.base_width)
        checks.boolean("model.sync_batchnorm", self.sync_batchnorm)

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


def _build(cls, values, where, prefix):
    """`cls(**values)`, its errors renamed from the spec's own `prefix` ("train.lr=...") to
    the config section's `where` ("transfer.standard.lr=...")."""
    kwargs = _fields(cls, values, where)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        text = str(e)
        if text.startswith(prefix):
            text = where + text[len(prefix):]
        elif not text.startswith(where):
            text = f"{where}: {text}"
        raise ConfigError(text) from None
    except TypeError as e:  # a required field missing
        raise ConfigError(f"{where}: {e}") from None


def model_spec(section) -> ModelSpec:
    return _build(ModelSpec, to_dict(section), "model", "model")


def data_spec(section, where="dataset") -> data.DataSpec:
    values = dict(to_dict(section))
    if isinstance(values.get("classes"), list):
        values["classes"] = tuple(values["classes"])
    return _build(data.DataSpec, values, where, "dataset")


def attack_spec(section, where) -> Optional[attacks.Attack]:
    """An attack from {eps, step_size, steps[, random_start]}; None/{} -> no attack."""
    values = to_dict(section)
    if not values:
        return None
    if isinstance(values, str):
        try:
            return attacks.preset(values)
        except ValueError as e:
            raise ConfigError(f"{where}={values!r}: {e}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{where}={values!r}: give {{eps, step_size, steps}} or a preset "
                          f"name ({sorted(attacks.PRESETS)})")
    return _build(attacks.Attack, values, where, "attack")


def train_spec(section, where="train") -> train.TrainSpec:
    values = dict(to_dict(section))
    if "attack" in values:
        values["attack"] = attack_spec(values["attack"], f"{where}.attack")
    if "eval_attack" in values:
        values["eval_attack"] = attack_spec(values["eval_attack"], f"{where}.eval_attack")
    if values.get("mode") == "standard":
        values["attack"] = None  # the attack section only matters to adversarial modes
    return _build(train.TrainSpec, values, where, "train")


def imp_spec(section, where="imp") -> imp.ImpSpec:
    values = {k: v for k, v in to_dict(section).items() if k != "train"}
    return _build(imp.ImpSpec, values, where, "imp")


def check_keys(section, allowed, where):
    unknown = sorted(set(to_dict(section)) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {sorted(allowed)})")
