"""The protocol of a stored run: everything that must be equal for two runs to share a table row.

A leaderboard row averages seeds; it is only worth what it promises if every seed was measured the
same way. The protocol record holds what decides that: the dataset (and a fingerprint of its
content), the arch, the threat model, the fine-tuning recipe (epochs, subset, validation size,
selection, method parameters, the natural model it started from), the evaluation points, each
attack with its budget and precision, and the attacks behind ``worst``. Seeds, devices, timings
and output locations are not part of it.

New runs store the record in their configuration (``config["protocol"]``); for runs stored before
it existed, :func:`protocol_of` derives it from what the store holds, and a field that cannot be
derived reads ``"unknown"``. Its :func:`protocol_id` is a short hash of the canonical JSON.
"""
from __future__ import annotations

import base64
import hashlib
import json
import zlib
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

PROTOCOL_VERSION = 1
UNKNOWN = "unknown"
# Budget fields that belong to the row (its eps and norm columns) or to the run (what the attack
# spent on its model; what verified bf16's fp32 check measured on it), not to how the column's attack
# was run.
_ROW_BUDGET_FIELDS = ("eps", "eps_given", "norm", "cost", "verification")
# The fine-tuning settings that change what is computed (not where or how fast).
_RECIPE_FIELDS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "ema", "train_subset", "val_size",
                  "select")
# Short names of protocol fields in the ``setting`` label of a leaderboard row.
_SHORT = {"points.n": "n", "points.indices": "points", "recipe.train_subset": "subset", "recipe.val_size": "val",
          "recipe.batch_size": "batch", "recipe.pretrained": "natural model", "dataset_fingerprint": "data"}


def digest(value: Any, length: int = 12) -> str:
    """A short SHA-256 of ``value``'s canonical JSON."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]


def dataset_fingerprint(data: Any) -> str:
    """A hash of what a dataset is: its identity, sizes, shapes and every label of both splits in order."""
    def labels(split: Any) -> Optional[List[int]]:
        values = next((getattr(split, name) for name in ("labels", "targets") if hasattr(split, name)), None)
        return None if values is None else [int(v) for v in list(values)]

    return digest({"key": data.key, "classes": data.num_classes, "shape": list(data.input_shape),
                   "train": [len(data.train), labels(data.train)], "test": [len(data.test), labels(data.test)]})


def protocol_of(method: str, dataset: str, arch: str, eps: float, norm: str, n_eval: int, config: Dict[str, Any],
                indices: Optional[Sequence[int]], budgets: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """The protocol record of one stored run (the stored one when the run has it)."""
    if isinstance(config.get("protocol"), dict):
        return config["protocol"]
    train = config.get("train") or {}
    source = config.get("pretrained_source")
    natural_model = Path(str(source)).name if source else UNKNOWN
    if method == "natural":
        recipe: Dict[str, Any] = {"natural": config.get("natural", UNKNOWN), "pretrained": natural_model}
    else:
        recipe = {name: train.get(name, UNKNOWN) for name in _RECIPE_FIELDS}
        recipe["params"] = config.get("method_params_used", UNKNOWN)
        recipe["pretrained"] = natural_model
    attacks = {metric: {k: v for k, v in budget.items() if k not in _ROW_BUDGET_FIELDS}
               for metric, budget in sorted(budgets.items())}
    behind_worst = sorted(m for m in budgets if m != "clean") if budgets else sorted(
        m for m in (config.get("eval") or {}).get("attacks", []) if m != "clean") or UNKNOWN
    return {"version": PROTOCOL_VERSION, "dataset": dataset,
            "dataset_fingerprint": config.get("dataset_fingerprint", UNKNOWN), "arch": arch,
            "threat": {"norm": norm, "eps": round(float(eps), 10)}, "recipe": recipe,
            "points": {"n": int(n_eval), "indices": digest(list(indices)) if indices else UNKNOWN},
            "attacks": attacks or UNKNOWN, "worst_over": behind_worst}


def protocol_id(record: Dict[str, Any]) -> str:
    return digest(record)


def _flatten(record: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(record, dict) or not record:
        return {prefix.rstrip("."): record}
    flat: Dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict) and key != "params" and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(first: Dict[str, Any], second: Dict[str, Any]) -> List[str]:
    """The dotted protocol fields in which two records differ (other points go without saying when
    their number differs)."""
    a, b = _flatten(first), _flatten(second)
    keys = sorted(key for key in set(a) | set(b) if a.get(key, UNKNOWN) != b.get(key, UNKNOWN))
    return [key for key in keys if not (key == "points.indices" and "points.n" in keys)]


def _short(key: str) -> str:
    if key in _SHORT:
        return _SHORT[key]
    if _is_precision(key):
        return f"{key.split('.')[1]} precision"
    return key.split(".")[-1] if key.startswith(("recipe.", "points.", "threat.")) else key


def _shown(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return digest(value, 6)
    return str(value)[:6] if len(str(value)) == 12 and str(value).isalnum() else str(value)


def _attack_set(flat: Dict[str, Any]) -> str:
    attacks = flat.get("worst_over")
    return ",".join(attacks) if isinstance(attacks, list) else UNKNOWN


def _is_precision(key: str) -> bool:
    return key.startswith("attacks.") and key.endswith(".precision")


def _readable(keys: List[str]) -> List[str]:
    """The differing fields in the order a reader wants them (recipe, points, threat, then the rest),
    with every attack-budget field folded into one ``attacks`` entry but an attack's precision (fp32 or
    verified-bf16), which is named on its own (``aa precision``)."""
    order = ("recipe.", "points.", "threat.", "dataset", "arch")
    folded = [key for key in keys if not (key.startswith("attacks") or key == "worst_over")]
    folded.sort(key=lambda key: next((i for i, prefix in enumerate(order) if key.startswith(prefix)), len(order)))
    precisions = [key for key in keys if _is_precision(key)]
    rest = [key for key in keys if key not in folded and key not in precisions]
    # What is left of the attack budgets once the precision is named is mostly what comes with it (the
    # fp32 check's share): named as ``attacks`` only when something else differs too.
    others = [key for key in rest if not (key.endswith(".fp32_check") or ".fp32_check." in key)]
    return folded + precisions + (["attacks"] if others else [])


def _value(flat: Dict[str, Any], key: str) -> str:
    return _attack_set(flat) if key == "attacks" else _shown(flat.get(key, UNKNOWN))


def setting_label(record: Dict[str, Any], others: Iterable[Dict[str, Any]]) -> str:
    """``epochs=1, n=60``: this record's values of the fields in which it differs from ``others``."""
    keys = _readable(sorted({key for other in others for key in differences(record, other)}))
    flat = _flatten(record)
    return ", ".join(f"{_short(key)}={_value(flat, key)}" for key in keys)


def describe_difference(stored: Dict[str, Any], wanted: Dict[str, Any]) -> str:
    """``epochs 1 vs 5, n 60 vs 200``: a one-line account of how two protocols differ."""
    a, b = _flatten(stored), _flatten(wanted)
    parts = [f"{_short(key)} {_value(a, key)} vs {_value(b, key)}" for key in _readable(differences(stored, wanted))]
    return ", ".join(parts[:6]) + (f" and {len(parts) - 6} more" if len(parts) > 6 else "")


def encode_indices(indices: Sequence[int], size: int) -> str:
    """A set of indices of a split of ``size`` items as a compressed bitmask (base64): a few kB for
    CIFAR's 50,000 training images, where the list would take 300 kB."""
    mask = bytearray((size + 7) // 8)
    for index in indices:
        mask[index // 8] |= 1 << (index % 8)
    return base64.b64encode(zlib.compress(bytes(mask), 9)).decode("ascii")


def decode_indices(text: str) -> List[int]:
    """The sorted indices :func:`encode_indices` encoded."""
    mask = zlib.decompress(base64.b64decode(text))
    return [byte_index * 8 + bit for byte_index, byte in enumerate(mask) for bit in range(8) if byte >> bit & 1]
