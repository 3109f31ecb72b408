"""Weights & Biases: offline runs under ``<run folder>/wandb`` (``wandb sync`` uploads them later);
``WANDB_MODE=online`` logs live. No account is needed offline."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict

from ..registry import TRACKERS
from ._base import DEFAULT_PROJECT, Tracker


@TRACKERS.register("wandb")
class WandB(Tracker):
    """History per epoch, the configuration as ``config``, results in the summary, the model folder as an
    artifact of type ``model``."""

    extra = "wandb"
    module = "wandb"
    has_artifacts = True

    def __init__(self, root: Path, name: str, group: str) -> None:
        super().__init__(root, name, group)
        import wandb

        (self.root / "wandb").mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT, group=group, name=name,
                              dir=str(self.root), mode=os.environ.get("WANDB_MODE") or "offline",
                              reinit="create_new", settings=wandb.Settings(console="off", silent=True))

    def log_metrics(self, values: Dict[str, float], step: int) -> None:
        if any(key.startswith("eval/") for key in values):
            # The results go to the summary: W&B's history steps only increase, and they share the last one.
            self.run.summary.update(values)
        else:
            self.run.log(values, step=step)

    def log_params(self, params: Dict[str, Any]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_artifact(self, folder: Path) -> None:
        import wandb

        artifact = wandb.Artifact(name=f"model-{self.name}".replace(":", "-"), type="model")
        artifact.add_dir(str(folder))
        self.run.log_artifact(artifact)

    def close(self) -> None:
        self.run.finish()
