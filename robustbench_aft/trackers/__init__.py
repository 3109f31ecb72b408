"""Experiment trackers (``--log tensorboard,mlflow,wandb``), one file each, registered in TRACKERS.

A tracker receives, per fine-tuning (or pre-training) run, every epoch's loss terms, learning rate,
validation clean/PGD accuracy and images/s, then every metric with its 95 % interval, the configuration
as parameters and, where it keeps artifacts, the model folder of :mod:`..modelfolder`. All of them work
offline: their files go under the run folder. A fourth tracker is one new file here with one
``@TRACKERS.register`` line (see :class:`Tracker`).
"""
from ..registry import import_submodules
from ._base import NO_TRACKERS, CellLogger, Tracker, Trackers, finish_tracked_cell, open_trackers

import_submodules(__name__)

__all__ = ["NO_TRACKERS", "CellLogger", "Tracker", "Trackers", "finish_tracked_cell", "open_trackers",
]
