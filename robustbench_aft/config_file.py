"""``bench run --config FILE.yaml``: experiment configurations kept in files.

A config file is a YAML mapping with three kinds of keys:

* any ``bench run`` option by its long name (``methods``, ``seeds``, ``eps``, ``batch-size`` or
  ``batch_size``, ``launcher``, …); lists are allowed where the option takes a comma-separated list;
* ``set``: method parameters, ``{afd: {alpha: 0.1}}`` or a list of ``afd.alpha=0.1`` strings;
* ``train`` / ``eval`` / ``threat``: any :class:`TrainConfig` / :class:`EvalConfig` /
  :class:`ThreatModel` field, including those that have no command-line option
  (``attack_options``, ``sanity``, …). Files written before the threat model had its section
  (``eval: {eps: …, norm: …}``) load the same.

Precedence, lowest first: the preset, the file, the command line (a value given both as an option
and in a section of the same file is an error). Every value goes through the same parsing and
checks as its command-line form: :meth:`RunConfig.from_cli` reads both.
:func:`dump_run_config` writes a resolved :class:`RunConfig` in this same format, so the printed
(``--print-config``) and stored (``config.yaml`` in the run folder) configurations load back.
"""
from __future__ import annotations

from typing import Any, Dict

from .config import RunConfig
from .errors import ConfigError, not_a_file_reason

# Evaluation fields that belong to the threat model: written in its own section.
_THREAT_FIELDS = ("eps", "norm", "eps_text")


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


def dump_run_config(config: RunConfig, header: str = "") -> str:
    """``config`` as a config file that ``bench run --config`` loads back to the same RunConfig."""
    import yaml

    values = config.to_dict()
    content: Dict[str, Any] = {key: values[key] for key in (
        "methods", "dataset", "arch", "preset", "pretrained", "pretrained_seed", "seeds", "db", "out", "device",
        "data_dir", "download", "skip_bad_images", "log")}
    content["threat"] = values["threat"]
    content["train"] = values["train"]
    content["eval"] = {key: value for key, value in values["eval"].items() if key not in _THREAT_FIELDS}
    content["set"] = values["method_params"]
    text = yaml.safe_dump(content, sort_keys=False, default_flow_style=False, width=110)
    return (f"# {header}\n" if header else "") + text
