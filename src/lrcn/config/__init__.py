"""Typed run configuration: the sections (`lrcn.config.sections`), YAML presets and overrides.

A run's whole resolved config is saved next to it (``config.yaml``) and inside every
checkpoint, so the exact model and data pipeline can be rebuilt from the file alone.
``config.yaml`` also lists the learning rate of every epoch (``lr_per_epoch``), derived from
the train section: reading the file back checks that it still agrees.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lrcn.config.schedule import lr_per_epoch
from lrcn.config.sections import (
    ANSWER_LOSSES, DEVICES, GRID_REDUCTIONS, LRM_PLACEMENTS, NO_KEY_RULES, NORMS, POSITIONS,
    PRECISIONS, SECTIONS, TASKS, VARIANTS, WORD_VOCABS, DataConfig, ModelConfig, RunConfig,
    TrainConfig, flag_fields, option, resumable_fields,
)
from lrcn.errors import LrcnError
from lrcn.fileio import atomic_write


__all__ = [
    "ANSWER_LOSSES", "DEVICES", "GRID_REDUCTIONS", "LRM_PLACEMENTS", "NO_KEY_RULES", "NORMS",
    "POSITIONS", "PRECISIONS", "SECTIONS", "TASKS", "VARIANTS", "WORD_VOCABS", "DataConfig",
    "ModelConfig", "RunConfig", "TrainConfig",
    "apply_overrides", "changed_fields", "config_from_dict", "config_to_dict", "default_preset",
    "flag_fields", "load_config", "option", "packaged_names", "preset_names", "read_yaml",
    "resumable_fields", "save_config",
]

DEFAULT_PRESET = "easyvqa"
# Users' own datasets (vqa2, vizwiz, ... layouts) trained from pixels: the configuration chosen
# for small datasets of several objects per image (README, "Your own data").
OWN_DATA_PRESET = "own-data"
LR_PER_EPOCH = "lr_per_epoch"  # config.yaml's derived top-level key


def packaged_names(folder: str) -> list[str]:
    """The names of the YAML files lrcn ships in ``src/lrcn/<folder>/``."""
    files = resources.files("lrcn") / folder
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


def read_yaml(name_or_file: str, folder: str, file_kind: str, packaged: str,
              listed_as: str = "known") -> tuple[Any, str]:
    """The YAML of a file, or of the packaged ``lrcn/<folder>/<name>.yaml``, and its name for
    messages (``preset easyvqa``, the path). A ``.yaml``/``.yml`` or existing path is a file.

    Args:
        file_kind: what a file is called in its error (``config file``).
        packaged: what a packaged one is called (``preset``); an unknown name's error lists
            the packaged ones as ``<listed_as> <packaged>s``.
    """
    path = Path(name_or_file)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise LrcnError(f"{file_kind} not found: {path}")
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        shipped = resources.files("lrcn") / folder / f"{name_or_file}.yaml"
        if not shipped.is_file():
            known = ", ".join(packaged_names(folder))
            raise LrcnError(f"unknown {packaged} {name_or_file!r}; {listed_as} {packaged}s: "
                            f"{known}")
        text, source = shipped.read_text(encoding="utf-8"), f"{packaged} {name_or_file}"
    try:
        return yaml.safe_load(text), source
    except yaml.YAMLError as exc:
        raise LrcnError(f"{source}: not valid YAML: {exc}") from None


def preset_names() -> list[str]:
    return packaged_names("presets")


def default_preset(dataset: str | None, features: bool) -> str:
    """The preset a run starts from when no ``--config`` is given.

    A dataset with a preset of its own name (easy-vizwiz) starts from it; a dataset read from
    the user's folder and trained from pixels (no feature stores) from ``own-data-<dataset>``
    where the dataset's kind of scene needs its own (CLEVR's), else from ``OWN_DATA_PRESET``;
    anything else (easy-VQA, runs on feature stores) from ``DEFAULT_PRESET``.
    """
    names = preset_names()
    if dataset in names:
        return dataset
    if dataset not in (None, "easyvqa") and not features:
        own = f"{OWN_DATA_PRESET}-{dataset}"
        return own if own in names else OWN_DATA_PRESET
    return DEFAULT_PRESET


def load_config(preset_or_file: str | None = None) -> RunConfig:
    """Build a config from the defaults, then a preset name or YAML file on top."""
    values, source = read_yaml(preset_or_file or DEFAULT_PRESET, "presets", "config file",
                               "preset")
    values = values or {}
    return config_from_dict(values, source)


def config_from_dict(values: dict[str, Any], source: str = "config") -> RunConfig:
    """Rebuild a RunConfig from nested dicts, rejecting unknown sections and keys.

    A derived ``lr_per_epoch`` (config.yaml's) must agree with the train section it came from.
    """
    if not isinstance(values, dict):
        raise LrcnError(f"{source}: expected a mapping with sections data/model/train")
    cfg = RunConfig()
    for section, entries in values.items():
        if section == LR_PER_EPOCH:
            continue  # checked once the train section is known
        if not hasattr(cfg, section):
            raise LrcnError(f"{source}: unknown section {section!r} (expected data, model, train)")
        if not isinstance(entries, dict):
            raise LrcnError(f"{source}: section {section!r} must be a mapping")
        apply_overrides(getattr(cfg, section), entries, f"{source}: {section}")
    if LR_PER_EPOCH in values:
        _check_lr_per_epoch(cfg.train, values[LR_PER_EPOCH], source)
    return cfg


def _saved_lr_per_epoch(t: TrainConfig) -> list[float]:
    """`lr_per_epoch` as config.yaml lists it: 6 significant digits, for reading."""
    return [float(f"{lr:.6g}") for lr in lr_per_epoch(t)]


def _check_lr_per_epoch(t: TrainConfig, saved: Any, source: str) -> None:
    """Refuse a saved lr_per_epoch that disagrees with the schedule of `t` (edited by hand:
    it would not be the schedule the run trains with)."""
    derived = lr_per_epoch(t)
    try:
        lrs = [float(lr) for lr in saved]
    except (TypeError, ValueError):
        lrs = None
    if lrs is None or len(lrs) != len(derived) or not all(
            math.isclose(a, b, rel_tol=1e-5) for a, b in zip(lrs, derived)):
        raise LrcnError(
            f"{source}: lr_per_epoch {saved!r} disagrees with the train section, whose schedule "
            f"is {_saved_lr_per_epoch(t)}; lr_per_epoch is derived from train.epochs, lr, "
            "warmup_epochs, decay_epochs and decay_rate: edit those (or delete lr_per_epoch)")


def _field_kinds(cls: type) -> dict[str, tuple[type, ...]]:
    """Field name -> the runtime types its annotation allows (``int | None`` -> int, NoneType)."""
    kinds = {}
    for name, hint in typing.get_type_hints(cls).items():
        is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        members = typing.get_args(hint) if is_union else (hint,)
        kinds[name] = tuple(typing.get_origin(m) or m for m in members)
    return kinds


def apply_overrides(target: Any, overrides: dict[str, Any], where: str = "config") -> None:
    """Set dataclass fields from a dict, checking names and coercing to the field types.

    A value must have a type the field's annotation allows: null only for optional fields,
    true/false only for bool fields; an int is accepted for a float field, a list for a tuple
    field, and a string such as ``1e-4`` (which YAML reads as a string) for a float field.
    """
    fields = {f.name: f for f in dataclasses.fields(target)}
    kinds = _field_kinds(type(target))
    for key, value in overrides.items():
        if key not in fields:
            raise LrcnError(f"{where}: unknown key {key!r}; known keys: {', '.join(fields)}")
        allowed = kinds[key]
        if tuple in allowed and isinstance(value, list):
            value = tuple(value)
        elif float in allowed and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif float in allowed and str not in allowed and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass  # rejected below, naming the value
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise LrcnError(f"{where}: {key} must be {expected}, got {value!r}")
        item_type = _list_item_type(type(target), key)
        if isinstance(value, list) and item_type and not all(
                isinstance(v, item_type) and not isinstance(v, bool) for v in value):
            raise LrcnError(f"{where}: {key} must be a list of {item_type.__name__}, got {value!r}")
        setattr(target, key, value)


def _list_item_type(cls: type, name: str) -> type | None:
    """``str`` for a field annotated ``list[str]``; None for other fields."""
    hint = typing.get_type_hints(cls)[name]
    if typing.get_origin(hint) is list and len(typing.get_args(hint)) == 1:
        return typing.get_args(hint)[0]
    return None


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain nested dict (YAML- and JSON-safe) of a config."""
    out = dataclasses.asdict(cfg)
    out["train"]["betas"] = list(out["train"]["betas"])
    return out


def changed_fields(old: RunConfig, new: RunConfig) -> list[tuple[str, Any, Any]]:
    """(``section.key``, old value, new value) of every field that differs, in field order."""
    a, b = config_to_dict(old), config_to_dict(new)
    return [(f"{section}.{key}", value, b[section][key])
            for section, fields in a.items() for key, value in fields.items()
            if value != b[section][key]]


def save_config(cfg: RunConfig, path: Path) -> None:
    """Write the config as YAML, atomically (a reader never sees half of it), with the
    learning rate of every epoch after it (derived; `config_from_dict` checks it)."""
    text = (yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
            + "# Derived from train (epochs, lr, warmup_epochs, decay_epochs, decay_rate): the "
              "learning rate of epochs 1, 2, ...\n"
            + yaml.safe_dump({LR_PER_EPOCH: _saved_lr_per_epoch(cfg.train)},
                             default_flow_style=None))
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
