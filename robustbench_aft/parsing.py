"""Every value parser of the command line and the config files, in one place.

Each parser turns the text a user typed (``8/255``, ``ours,trades``, ``on``) into a value or
raises :class:`~robustbench_aft.errors.ConfigError` with a one-line message naming the option
and what was expected. argparse ``type=`` functions raise ``argparse.ArgumentTypeError`` instead,
which argparse turns into ``bench run: argument --epochs: …`` (the same one line).
"""
from __future__ import annotations

import argparse
import math
from typing import Any, Callable, List, Optional

from .errors import ConfigError

LINF_EPS_MAX = 1.0


def fraction(text: str) -> float:
    """``'8/255'``, ``'0.031'`` or ``'2e-2'`` → float (the one place that reads fractions).

    Raises ValueError (or ZeroDivisionError) on anything else, for the caller to word.
    """
    numerator, slash, denominator = str(text).strip().partition("/")
    if slash:
        return float(numerator) / float(denominator)
    return float(numerator)


def parse_eps(text: str, norm: str = "Linf", option: str = "--eps") -> float:
    """The budget ``text`` in pixel units; negative, infinite, malformed or (L∞) above-1 values raise."""
    try:
        value = fraction(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{option} must be a number or a fraction like 8/255, got {text!r}") from None
    if not value >= 0 or math.isinf(value):
        raise ConfigError(f"{option} must be a finite number >= 0, got {text!r}")
    if norm == "Linf" and value > LINF_EPS_MAX:
        raise ConfigError(f"{option} {text} is larger than 1: images are in [0, 1], so an L-inf eps above 1 means "
                          "nothing (did you mean 8/255 rather than 8?)")
    return value


def _items(text: str, option: str, choices: Callable[[], List[str]]) -> List[str]:
    items = [part.strip() for part in str(text).split(",")]
    if not any(items):
        raise ConfigError(f"{option} is empty; choose from {', '.join(choices())}")
    if not all(items):
        raise ConfigError(f"{option} {text!r} has an empty item; separate names with single commas")
    return items


def _no_duplicates(option: str, given: List[str], canonical: List[str]) -> List[str]:
    seen: dict = {}
    for name, resolved in zip(given, canonical):
        if resolved in seen:
            alias = "" if seen[resolved] == name else f" ({seen[resolved]!r} and {name!r} are the same)"
            raise ConfigError(f"{option} names {resolved} twice{alias}; give each once")
        seen[resolved] = name
    return canonical


def parse_methods(text: str) -> List[str]:
    """``'ours,trades'`` or ``'all'`` → canonical method names; empty lists and duplicates (aliases
    resolved first: ``ours,afd``) are errors, unknown names get suggestions."""
    from .registry import METHODS

    items = _items(text, "--methods", METHODS.names)
    if [item.lower() for item in items] == ["all"]:
        return METHODS.names()
    return _no_duplicates("--methods", items, [METHODS.canonical(item) for item in items])


def parse_attacks(text: str) -> List[str]:
    """Comma-separated attack names → canonical names (empty lists and duplicates are errors)."""
    from .registry import ATTACKS

    items = _items(text, "--attacks", ATTACKS.names)
    return _no_duplicates("--attacks", items, [ATTACKS.canonical(item) for item in items])


def parse_seeds(text: str) -> List[int]:
    """``'0,1,2'`` → ``[0, 1, 2]``: integers >= 0, at least one, no duplicates."""
    items = [part.strip() for part in str(text).split(",")]
    try:
        seeds = [int(part) for part in items if part]
    except ValueError:
        raise ConfigError(f"--seeds expects comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds or any(seed < 0 for seed in seeds) or len(seeds) != len(items):
        raise ConfigError(f"--seeds expects comma-separated integers >= 0 such as 0,1,2, got {text!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds has duplicates: {seeds}")
    return seeds


def _number_type(kind: type, positive: bool, description: str) -> Callable[[str], Any]:
    """An argparse ``type``: ``kind`` (int or float) that is finite and > 0 (``positive``) or >= 0."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}") from None
        if not (value > 0 if positive else value >= 0) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}")
        return value

    parse.__name__ = description.replace(" ", "_")
    return parse


positive_int = _number_type(int, True, "a positive integer")
non_negative_int = _number_type(int, False, "an integer >= 0")
positive_float = _number_type(float, True, "a positive number")
non_negative_float = _number_type(float, False, "a number >= 0")


def share(text: str) -> float:
    """An argparse ``type``: a share of a set, a number in (0, 1] (``0.1`` is ten per cent)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a share in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share in (0, 1], got {text!r}")
    return value


def on_off(text: str) -> bool:
    """``on``/``off`` (and the YAML-ish true/false, yes/no, 1/0) → bool."""
    lowered = str(text).strip().lower()
    if lowered in ("on", "true", "yes", "1"):
        return True
    if lowered in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")


def type_in_words(annotation: Any) -> str:
    """``int`` → ``an integer``, ``Optional[float]`` → ``a number (or none)``: for error messages."""
    kind = str(annotation)
    words = ("true or false" if "bool" in kind else "an integer" if "int" in kind
             else "a number" if "float" in kind else "text")
    return words + (" (or none)" if "Optional" in kind else "")


def parse_value(text: str, annotation: Any, key: str) -> Any:
    """Parse ``text`` for a dataclass field of type ``annotation`` (bool, int, float, str, Optional)."""
    kind = str(annotation)
    try:
        if "Optional" in kind and str(text).strip().lower() in ("none", "null"):
            return None
        if "bool" in kind:
            return on_off(text)
        if "int" in kind:
            return int(text)
        if "float" in kind:
            return fraction(text)
        return text
    except (ValueError, ZeroDivisionError, argparse.ArgumentTypeError):
        raise ConfigError(f"{key}={text}: expected {type_in_words(annotation)}") from None


def parse_arch(name: str, kwargs_text: Optional[str] = None) -> str:
    """``--arch`` (and ``--arch-kwargs``) → the canonical arch name (``timm:NAME[k=v]`` for external ones)."""
    from .models import canonical_arch
    from .models.external import canonical_external, is_external, parse_kwargs

    if kwargs_text and not is_external(name):
        raise ConfigError(f"--arch-kwargs is for external architectures (timm:, torchvision:, py:), not {name}")
    return canonical_external(name, parse_kwargs(kwargs_text)) if is_external(name) else canonical_arch(name)


def parse_trackers(text: Optional[str]) -> List[str]:
    """``--log a,b``: canonical tracker names, each installed; unknown names and missing packages are
    one-line errors, raised before anything is written. None or empty: no tracking."""
    from .registry import TRACKERS

    if not text:
        return []
    names: List[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part.lower() == "none":
            continue
        name = TRACKERS.canonical(part)
        if name not in names:
            names.append(name)
    for name in names:
        TRACKERS.get(name).check_installed(name)
    return names
