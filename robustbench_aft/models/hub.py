"""Model folders in the Hugging Face Hub layout, read back: ``--checkpoint DIR`` and
``--checkpoint hf-hub:ORG/NAME``.

A folder holds ``model.safetensors`` (the weights; safetensors, so loading runs no code),
``config.json`` (the arch spec with classes, channels, input size, mean and std), ``README.md`` (the
model card) and ``config.yaml`` (the run's configuration). :mod:`robustbench_aft.modelfolder`
writes them from a stored run; this module only reads, so that model resolution (pretrained.py)
depends on nothing above the models.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from torch import nn

from ..errors import CheckpointError, ConfigError, UserError
from ..extras import require

FOLDER_FORMAT = "robustbench_aft.model/1"
CONFIG_JSON = "config.json"
WEIGHTS = "model.safetensors"
CARD = "README.md"
RUN_CONFIG = "config.yaml"
FOLDER_FILES = (WEIGHTS, CONFIG_JSON, CARD, RUN_CONFIG)
HUB_PREFIX = "hf-hub:"
HUB_EXTRA = "hub"
LIBRARY_NAME = "robustbench-aft"


def is_model_folder(source: str) -> bool:
    """Whether ``source`` names a model folder: ``hf-hub:…`` or an existing directory."""
    return source.startswith(HUB_PREFIX) or Path(source).expanduser().is_dir()


def hub_folder(name: str) -> Path:
    """The local snapshot of ``hf-hub:ORG/NAME[@REVISION]``: the Hugging Face cache when ``HF_HUB_OFFLINE``
    is set, else downloaded (or taken from the cache when the Hub cannot be reached)."""
    hub = require("huggingface_hub", HUB_EXTRA, f"{HUB_PREFIX}{name}")
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    repo_id, _, revision = name.partition("@")
    try:
        hub.utils.validate_repo_id(repo_id)
    except HFValidationError:
        raise ConfigError(f"{HUB_PREFIX}{name}: expected {HUB_PREFIX}ORG/NAME (optionally @REVISION)") from None
    if "/" not in repo_id:
        raise ConfigError(f"{HUB_PREFIX}{name}: expected {HUB_PREFIX}ORG/NAME (optionally @REVISION)")
    # Read at call time, not at import time as huggingface_hub.constants does, so that the process (and a
    # test) can switch to offline after importing.
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    cache = os.environ.get("HF_HUB_CACHE") or None
    where = cache or str(hub.constants.HF_HUB_CACHE)
    try:
        path = hub.snapshot_download(repo_id, revision=revision or None, cache_dir=cache, local_files_only=offline,
                                     allow_patterns=list(FOLDER_FILES), library_name=LIBRARY_NAME)
    except LocalEntryNotFoundError:
        if offline:
            raise CheckpointError(f"{HUB_PREFIX}{name} is not in the Hugging Face cache ({where}) and HF_HUB_OFFLINE "
                                  "is set: download it once with the network on, or unset HF_HUB_OFFLINE") from None
        raise CheckpointError(f"{HUB_PREFIX}{name} is neither in the Hugging Face cache ({where}) nor reachable on "
                              "the Hub (no network?)") from None
    except Exception as exc:  # huggingface_hub raises several HTTP and repository errors; all mean "not there"
        raise CheckpointError(f"{HUB_PREFIX}{name} could not be fetched from the Hub: "
                              f"{' '.join(str(exc).split())[:160]}") from None
    return Path(path)


def read_folder_config(source: str) -> Tuple[Path, Dict[str, Any]]:
    """The local folder of ``source`` (a directory or ``hf-hub:…``) and its checked ``config.json``."""
    folder = hub_folder(source[len(HUB_PREFIX):]) if source.startswith(HUB_PREFIX) else Path(source).expanduser()
    missing = [name for name in (CONFIG_JSON, WEIGHTS) if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"{source} is not a model folder: it lacks {' and '.join(missing)} (write one with "
                              "bench export --model DIR --method M)")
    try:
        config = json.loads((folder / CONFIG_JSON).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{source}/{CONFIG_JSON} is not valid JSON ({exc})") from None
    required = ("architecture", "num_classes", "in_channels", "input_size", "mean", "std")
    absent = [key for key in required if key not in config] if isinstance(config, dict) else list(required)
    if absent:
        raise CheckpointError(f"{source}/{CONFIG_JSON} lacks {', '.join(absent)}")
    return folder, config


def folder_arch(source: str) -> str:
    """The arch spec a model folder's ``config.json`` names (what ``bench eval`` builds by default)."""
    return str(read_folder_config(source)[1]["architecture"])


def load_model_folder(source: str, data, arch: Optional[str] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """Build the network ``config.json`` describes and load ``model.safetensors`` into it; every mismatch
    (unknown arch, another dataset's classes or input size, other shapes) is a one-line CheckpointError."""
    from . import build_model, canonical_arch

    folder, config = read_folder_config(source)
    safetensors_torch = require("safetensors.torch", HUB_EXTRA, f"--checkpoint {source}")
    named = str(config["architecture"])
    if arch is not None and canonical_arch(arch) != canonical_arch(named):
        raise CheckpointError(f"{source} holds arch {named!r}, not {arch!r}: pass --arch {named}")
    if int(config["num_classes"]) != data.num_classes or list(config["input_size"]) != list(data.input_shape):
        raise CheckpointError(f"{source} is a model of {config['num_classes']} classes on "
                              f"{tuple(config['input_size'])} "
                              f"inputs ({config.get('dataset', '?')}); dataset {data.name} has {data.num_classes} "
                              f"classes on {tuple(data.input_shape)}")
    try:
        model = build_model(named, int(config["num_classes"]), int(config["in_channels"]), config["mean"],
                            config["std"], tuple(config["input_size"]), user_normalisation=True)
    except UserError as exc:
        raise CheckpointError(f"{source}/{CONFIG_JSON} names an arch that cannot be built: {exc}") from None
    try:
        state = safetensors_torch.load_file(str(folder / WEIGHTS))
    except Exception as exc:  # safetensors raises its own error type (and OSError) for a bad file
        raise CheckpointError(f"{source}/{WEIGHTS} is unreadable: {' '.join(str(exc).split())[:160]}") from None
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:4])}"] if missing else []) + \
                ([f"unexpected {', '.join(unexpected[:4])}"] if unexpected else [])
        raise CheckpointError(f"{source}/{WEIGHTS} does not fit arch {named!r}: {'; '.join(parts)}")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if state[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"{source}/{WEIGHTS} does not fit arch {named!r}: shape mismatch in "
                              f"{', '.join(wrong[:3])}")
    model.load_state_dict(state)
    info_keys = ("method", "seed", "run_id", "dataset", "package_version", "git_commit")
    return model, {"source": source, "arch": named, "folder": str(folder),
                   "metadata": {k: config[k] for k in info_keys if k in config}}


__all__ = ["folder_arch", "hub_folder", "is_model_folder", "load_model_folder", "read_folder_config"]
