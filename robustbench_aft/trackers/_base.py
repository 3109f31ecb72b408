"""The tracker contract, and what turns a run's epochs and results into tracker calls.

A :class:`Tracker` is one tracked run (a fine-tuning cell, or a natural pre-training) in one tool; it
knows four calls: scalars at a step, parameters, an artifact folder, close. What is logged, and under
which names, is decided once here (:class:`CellLogger`), so every tracker shows the same curves:

* per epoch (step = epoch): ``train/<term>`` (every loss term of the method's training step, its epoch
  mean), ``train/lr``, ``train/images_per_second`` (that epoch's), ``val/clean`` and ``val/pgd``;
* at the end (step = the last epoch): ``eval/<metric>`` with ``eval/<metric>_ci_low``/``_ci_high`` (the
  95 % Wilson interval over the evaluated points, as the leaderboard's one-seed cells);
* the configuration as parameters (dotted names, ``train.lr``), and the model folder as an artifact.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Dict, Optional, Sequence

from ..extras import require
from ..registry import TRACKERS

DEFAULT_PROJECT = "robustbench-aft"


class Tracker:
    """One run in one tracking tool. Subclasses register with ``@TRACKERS.register("name")``.

    Args:
        root: the run folder; a tracker keeps its files under it (offline by default).
        name: the tracked run's name (``afd-seed0``, ``natural``).
        group: what groups the runs of one ``bench run`` (its group id): an experiment, a group.
    """

    #: the ``setup.cfg`` extra that installs the tool, and the module that must import.
    extra: ClassVar[str] = ""
    module: ClassVar[str] = ""
    #: whether :meth:`log_artifact` stores files (TensorBoard has no artifacts).
    has_artifacts: ClassVar[bool] = False

    def __init__(self, root: Path, name: str, group: str) -> None:
        self.root, self.name, self.group = Path(root), name, group

    @classmethod
    def check_installed(cls, name: str) -> None:
        """A one-line DependencyError naming the extra when the tool is not installed."""
        require(cls.module, cls.extra, f"--log {name}")

    def log_metrics(self, values: Dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_params(self, params: Dict[str, Any]) -> None:
        raise NotImplementedError

    def log_artifact(self, folder: Path) -> None:
        """Store ``folder`` (a model folder) with the run; the default keeps none."""

    def close(self) -> None:
        """Flush and end the run."""


def flatten(values: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested dicts as dotted keys; lists and None as text, numbers and strings as they are."""
    flat: Dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        elif isinstance(value, (bool, int, float, str)):
            flat[dotted] = value
        else:
            flat[dotted] = str(value)
    return flat


class CellLogger:
    """The trackers of one tracked run: epochs in, tracker calls out (see the module docstring)."""

    def __init__(self, trackers: Sequence[Tracker]) -> None:
        self.trackers = list(trackers)
        self.last_step = 0
        self._previous = (0, 0.0)  # images and seconds at the end of the previous epoch

    @property
    def has_artifacts(self) -> bool:
        return any(t.has_artifacts for t in self.trackers)

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def metrics(self, values: Dict[str, float], step: int) -> None:
        self.last_step = max(self.last_step, step)
        for tracker in self.trackers:
            tracker.log_metrics(values, step)

    def epoch(self, report: Dict[str, Any]) -> None:
        """One epoch: ``epoch``, ``lr``, ``terms`` (loss term → epoch mean), ``images`` and ``seconds``
        (cumulative, as the engine counts them) and ``validation`` (``clean``, ``pgd``) or None."""
        images, seconds = int(report["images"]), float(report["seconds"])
        if images < self._previous[0]:
            self._previous = (0, 0.0)
        rate = (images - self._previous[0]) / max(seconds - self._previous[1], 1e-9)
        self._previous = (images, seconds)
        values = {f"train/{term}": float(value) for term, value in report.get("terms", {}).items()}
        values.update({"train/lr": float(report["lr"]), "train/images_per_second": rate})
        for key in ("clean", "pgd"):
            if report.get("validation") and key in report["validation"]:
                values[f"val/{key}"] = float(report["validation"][key])
        self.metrics(values, int(report["epoch"]))

    def results(self, accuracy: Dict[str, float], n_points: int) -> Dict[str, float]:
        """Every metric with its 95 % interval, logged at the last step; returns what was logged."""
        import math

        from ..stats import interval_for

        values: Dict[str, float] = {}
        for metric, value in accuracy.items():
            values[f"eval/{metric}"] = float(value)
            low, high = interval_for([float(value)], n_points)
            if not math.isnan(low):
                values[f"eval/{metric}_ci_low"], values[f"eval/{metric}_ci_high"] = float(low), float(high)
        self.metrics(values, self.last_step)
        return values

    def params(self, config: Dict[str, Any]) -> None:
        flat = flatten(config)
        for tracker in self.trackers:
            tracker.log_params(flat)

    def artifact(self, folder: Path) -> None:
        for tracker in self.trackers:
            if tracker.has_artifacts:
                tracker.log_artifact(folder)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


class Trackers:
    """The ``--log`` trackers of one ``bench run`` (or ``bench pretrain``): one :class:`CellLogger` per
    tracked run. Empty (``names`` = []) it logs nothing and costs nothing."""

    def __init__(self, names: Sequence[str], root: Optional[Path], group: str = DEFAULT_PROJECT) -> None:
        self.names = [TRACKERS.canonical(name) for name in names]  # an unknown name: one line with suggestions
        self.root, self.group = root, group

    def __bool__(self) -> bool:
        return bool(self.names)

    def cell(self, name: str) -> CellLogger:
        if not self.names or self.root is None:
            return CellLogger([])
        return CellLogger([TRACKERS.get(tracker)(self.root, name, self.group) for tracker in self.names])


NO_TRACKERS = Trackers([], None)

# What the configuration parameters leave out: per-epoch curves are metrics already.
NOT_PARAMETERS = ("training_history",)


def finish_tracked_cell(tracker: CellLogger, db: str, run_id: str, config: Dict[str, Any], result: Any,
                        cell_folder: Path) -> None:
    """After a cell's row is stored: its metrics with intervals, its configuration and, for trackers that
    keep artifacts, its model folder (written to ``<cell folder>/model`` and recorded in the store)."""
    if not tracker:
        return
    tracker.results(result.accuracy, result.n)
    tracker.params({key: value for key, value in config.items() if key not in NOT_PARAMETERS})
    if tracker.has_artifacts:
        from ..modelfolder import export_model_folder

        folder = Path(cell_folder) / "model"
        export_model_folder(db, None, folder, run_id=run_id)
        tracker.artifact(folder)
    tracker.close()


def open_trackers(names: Sequence[str], root: Path, group: str) -> Trackers:
    """The trackers ``names`` (from :func:`parse_trackers`; checked again here for a config built in
    Python) writing under the run folder ``root``."""
    for name in names:
        TRACKERS.get(name).check_installed(name)
    return Trackers(names, root, group) if names else NO_TRACKERS


__all__ = ["CellLogger", "NO_TRACKERS", "Tracker", "Trackers", "finish_tracked_cell", "flatten", "open_trackers",
]
