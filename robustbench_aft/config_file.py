"""``bench run --config FILE.yaml``: experiment configurations kept in files.

A config file is a YAML mapping with three kinds of keys:

* any ``bench run`` option by its long name (``methods``, ``seeds``, ``eps``, ``batch-size`` or
  ``batch_size``, ``launcher``, …); lists are allowed where the option takes a comma-separated list;
* ``set``: method parameters, ``{afd: {alpha: 0.1}}`` or a list of ``afd.alpha=0.1`` strings;
* ``train`` / ``eval``: any :class:`TrainConfig` / :class:`EvalConfig` field, including those that
  have no command-line option (``momentum``, ``weight_decay``, ``ema``, ``attack_options``, …).

Precedence, lowest first: the preset, the file's ``train``/``eval`` sections, the file's options,
the command line. Every value goes through the same parsing and checks as its command-line form.
:func:`dump_run_config` writes a resolved :class:`RunConfig` in this same format, so the printed
(``--print-config``) and stored (``config.yaml`` in the run folder) configurations load back.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Dict, List, Tuple

from .config import EvalConfig, RunConfig, TrainConfig, parse_value
from .errors import ConfigError, not_a_file_reason

# Options that make no sense inside a file (they name the file, or print instead of running).
NOT_IN_FILE = {"config", "print_config", "help"}
SECTIONS = {"train": TrainConfig, "eval": EvalConfig}


def load_config_file(path: str) -> Dict[str, Any]:
    """The YAML mapping in ``path``; a missing, unreadable or non-mapping file is a one-line error."""
    import yaml

    reason = not_a_file_reason(path)
    if reason:
        raise ConfigError(f"--config {path} {reason}")
    try:
        with open(path, encoding="utf-8") as handle:
            content = yaml.safe_load(handle)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path} is not valid YAML ({' '.join(str(exc).split())[:160]})") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"--config {path} must hold a mapping of option: value, not a {type(content).__name__}")
    return content


def _as_argument_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _set_items(value: Any, path: str) -> List[str]:
    if isinstance(value, dict):
        items = []
        for method, params in value.items():
            if not isinstance(params, dict):
                raise ConfigError(f"--config {path}: set.{method} must map parameter names to values")
            items += [f"{method}.{name}={_as_argument_text(v)}" for name, v in params.items()]
        return items
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"--config {path}: set must be a mapping {{method: {{param: value}}}} or a list of "
                      "METHOD.PARAM=VALUE strings")


def _section(name: str, values: Any, path: str) -> Dict[str, Any]:
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: {name} must be a mapping of {SECTIONS[name].__name__} fields")
    known = {f.name: f for f in dataclasses.fields(SECTIONS[name])}
    parsed = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"--config {path}: {name}.{key} is not a {SECTIONS[name].__name__} field; known: "
                              f"{', '.join(sorted(known))}")
        if value is None or isinstance(value, (list, dict)):
            parsed[key] = value
        else:
            try:
                parsed[key] = parse_value(str(value), known[key].type, f"{name}.{key}")
            except ConfigError:
                raise ConfigError(f"--config {path}: {name}.{key}={value!r} is not a value of type "
                                  f"{known[key].type}") from None
    return parsed


def file_defaults(parser: argparse.ArgumentParser, content: Dict[str, Any],
                  path: str) -> Tuple[Dict[str, Any], Dict[str, Dict[str, Any]]]:
    """Split a config file into argparse defaults for ``parser`` (each value parsed and checked as
    its command-line form would be) and the ``train``/``eval`` sections."""
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in NOT_IN_FILE}
    defaults: Dict[str, Any] = {}
    sections: Dict[str, Dict[str, Any]] = {"train": {}, "eval": {}}
    for key, value in content.items():
        dest = str(key).replace("-", "_")
        if dest in SECTIONS:
            sections[dest] = _section(dest, value, path)
        elif dest == "set":
            defaults["set"] = _set_items(value, path)
        elif dest == "pretrained_seed":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"--config {path}: pretrained_seed must be an integer >= 0")
            defaults[dest] = value
        elif dest in actions:
            defaults[dest] = _parse_option(actions[dest], value, path)
        else:
            raise ConfigError(f"--config {path}: unknown option {key!r}; use `bench run` option names, set, train "
                              "or eval (see `bench run --help`)")
    overlap = [f"{name}.{key}" for name, values in sections.items() for key in values
               if _flat_name(name, key) in defaults]
    if overlap:
        raise ConfigError(f"--config {path}: {', '.join(overlap)} is also given as a top-level option; keep one")
    return defaults, sections


def _flat_name(section: str, field_name: str) -> str:
    # The command-line options that write to a section's field under a different name.
    renamed = {("eval", "batch_size"): "eval_batch_size"}
    return renamed.get((section, field_name), field_name)


def _parse_option(action: argparse.Action, value: Any, path: str) -> Any:
    option = action.option_strings[-1]
    if action.nargs == 0:  # store_true
        if not isinstance(value, bool):
            raise ConfigError(f"--config {path}: {option[2:]} must be true or false, got {value!r}")
        return value
    if value is None:
        return None
    text = _as_argument_text(value)
    try:
        parsed = action.type(text) if action.type is not None else text
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise ConfigError(f"--config {path}: {option[2:]}: {exc}") from None
    if action.choices is not None and parsed not in action.choices:
        raise ConfigError(f"--config {path}: {option[2:]} must be one of {', '.join(map(str, action.choices))}, "
                          f"got {parsed!r}")
    return parsed


def dump_run_config(config: RunConfig, header: str = "") -> str:
    """``config`` as a config file that ``bench run --config`` loads back to the same RunConfig."""
    import yaml

    values = config.to_dict()
    content: Dict[str, Any] = {key: values[key] for key in (
        "methods", "dataset", "arch", "preset", "pretrained", "pretrained_seed", "seeds", "db", "out", "device",
        "data_dir", "download")}
    content["train"] = values["train"]
    content["eval"] = values["eval"]
    content["set"] = values["method_params"]
    text = yaml.safe_dump(content, sort_keys=False, default_flow_style=False, width=110)
    return (f"# {header}\n" if header else "") + text
