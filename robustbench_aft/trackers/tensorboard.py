"""TensorBoard: event files under ``<run folder>/tensorboard/<run>/`` (``tensorboard --logdir`` that folder)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from ..registry import TRACKERS
from ._base import Tracker


@TRACKERS.register("tensorboard", "tb")
class TensorBoard(Tracker):
    """Scalars per epoch, the configuration as hyper-parameters and as a text table; no artifacts."""

    extra = "tensorboard"
    module = "tensorboard"

    def __init__(self, root: Path, name: str, group: str) -> None:
        super().__init__(root, name, group)
        from torch.utils.tensorboard import SummaryWriter

        self.folder = self.root / "tensorboard" / name
        self.writer = SummaryWriter(log_dir=str(self.folder))
        self.final: Dict[str, float] = {}

    def log_metrics(self, values: Dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.final.update({k: v for k, v in values.items() if k.startswith("eval/")})

    def log_params(self, params: Dict[str, Any]) -> None:
        self.params = params

    def close(self) -> None:
        from torch.utils.tensorboard.summary import hparams

        params = getattr(self, "params", None)
        if params:
            # The HParams plugin pairs the parameters with the final metrics; SummaryWriter.add_hparams
            # would write them into a second event file in a sub-folder, so the summaries go in directly.
            for summary in hparams(params, self.final or {"eval/none": 0.0}):
                self.writer.file_writer.add_summary(summary)
            table = "\n".join(f"| {key} | {value} |" for key, value in sorted(params.items()))
            self.writer.add_text("config", "| parameter | value |\n|---|---|\n" + table)
        self.writer.close()
