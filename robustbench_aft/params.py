"""Hyper-parameter fields of methods: their valid ranges, how a field is declared, checked and listed.

A method's ``Params`` is a dataclass whose fields are declared with :func:`param` (default, help,
source of the default, valid values); :func:`check_params` validates a whole ``Params`` when a
method is built, :func:`params_problem` one value (``--set method.field=value``), and
:func:`param_docs` lists the fields (``bench list methods``). The PGD training-attack fields that
several methods share are built by :func:`.method.training_attack_params`, next to the
:meth:`.method.Method.training_attack` that reads them.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from typing import Any, Dict, List, Optional

from .errors import ConfigError
from .parsing import fraction
from .threat import CIFAR_EPS


@dataclass(frozen=True)
class Range:
    """The values a ``Params`` field accepts: a finite number (an integer when ``integer``) between
    ``low`` and ``high``; ``low_open`` excludes ``low`` itself. ``--set`` and every Method check it."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    integer: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        bounds = []
        if self.low > -math.inf:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high < math.inf:
            bounds.append(f"<= {self.high:g}")
        return " ".join([kind] + [" and ".join(bounds)] * bool(bounds))

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not float(value).is_integer():
            return False
        if not math.isfinite(value) or value > self.high:
            return False
        return value > self.low if self.low_open else value >= self.low


# The ranges hyper-parameters use; a field's help says what its bounds mean.
REAL = Range()
NONNEGATIVE = Range(0.0)
POSITIVE = Range(0.0, low_open=True)
PROBABILITY = Range(0.0, 1.0)
COUNT = Range(1, integer=True)
COUNT_OR_ZERO = Range(0, integer=True)
# A switch: any bool (the CLI parses on/off, true/false, 1/0).
FLAG = None


def param(default: Any, help: str, source: str, valid: Optional[Range]) -> Any:
    """A ``Params`` field with its default, a one-line help, where the default comes from and its
    valid values (a :class:`Range`, or :data:`FLAG` for a bool)."""
    return field(default=default, metadata={"help": help, "source": source, "valid": valid})


def params_problem(params_cls: type, name: str, value: Any) -> Optional[str]:
    """Why ``value`` is not valid for field ``name`` of ``params_cls`` (None when it is)."""
    spec = next(f for f in fields(params_cls) if f.name == name)
    valid = spec.metadata.get("valid")
    if valid is None:
        return None if isinstance(value, bool) else "must be true or false"
    return None if valid.accepts(value) else f"must be {valid.describe()}"


def check_params(method_name: str, params: Any) -> None:
    """Raise a one-line ConfigError for the first field of ``params`` outside its declared range."""
    for f in fields(params):
        problem = params_problem(type(params), f.name, getattr(params, f.name))
        if problem:
            raise ConfigError(f"{method_name}.{f.name}={getattr(params, f.name)!r} {problem}")


def param_docs(params_cls: type) -> List[Dict[str, Any]]:
    """Name, type, default, help and source of every field of a ``Params`` dataclass."""
    rows = []
    for f in fields(params_cls):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        valid = f.metadata.get("valid")
        rows.append({"name": f.name, "type": getattr(f.type, "__name__", str(f.type)), "default": default,
                     "help": f.metadata.get("help", ""), "source": f.metadata.get("source", ""),
                     "valid": "true or false" if valid is None else valid.describe()})
    return rows


# Training attacks are specified relative to the run's eps so that one setting serves every
# dataset; at the CIFAR eps of 8/255 (threat.CIFAR_EPS) these ratios give the official values back.
def training_attack_params(*, steps: int, step: str, source: str, eps: Optional[str] = None,
                           eps_source: Optional[str] = None, step_source: Optional[str] = None,
                           steps_help: str = "PGD steps of the training attack") -> type:
    """The ``Params`` base of a method with a PGD training attack: ``attack_steps``,
    ``attack_step_ratio`` and (unless ``eps`` is None: the run's eps itself) ``attack_eps_ratio``.

    ``step``/``eps`` are the official absolute values at 8/255, as text (``"0.007"``, ``"2/255"``);
    the fields hold their ratio to 8/255 so that one setting serves every dataset. A method's own
    ``Params`` inherits from the result and adds its fields; :meth:`Method.training_attack` reads them.
    """
    spec = [
        ("attack_steps", int, param(steps, steps_help, source, COUNT)),
        ("attack_step_ratio", float, param(fraction(step) / CIFAR_EPS, f"training attack step / eps ({step} at 8/255)",
                                           step_source or source, POSITIVE)),
    ]
    if eps is not None:
        scale = f" ({eps} at 8/255)" if fraction(eps) != CIFAR_EPS else ""
        spec.append(("attack_eps_ratio", float, param(fraction(eps) / CIFAR_EPS,
                                                      f"training attack eps / the run's eps{scale}",
                                                      eps_source or source, POSITIVE)))
    return make_dataclass("TrainingAttackParams", spec)
