"""MLflow: a local file store under ``<run folder>/mlruns`` (``mlflow ui --backend-store-uri`` that URI),
one experiment per ``bench run``, one MLflow run per cell; ``MLFLOW_TRACKING_URI`` points it elsewhere."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict

from ..registry import TRACKERS
from ._base import Tracker

# MLflow refuses longer parameter values (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH).
MAX_PARAM_LENGTH = 6000


def tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the file store in the run folder.

    MLflow 3 keeps the file store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE``
    is set; we opt in for our own default (a store in the run folder that needs no server and no
    database migration, seconds faster to open than SQLite), never for a URI the user chose."""
    chosen = os.environ.get("MLFLOW_TRACKING_URI")
    if chosen:
        return chosen
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return (Path(root).resolve() / "mlruns").as_uri()


@TRACKERS.register("mlflow")
class MLflow(Tracker):
    """Metrics with steps, parameters, and the model folder as the artifact ``model/``."""

    extra = "mlflow"
    module = "mlflow"
    has_artifacts = True

    def __init__(self, root: Path, name: str, group: str) -> None:
        super().__init__(root, name, group)
        # The client, not mlflow's fluent API: that keeps one global active run per process.
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri(self.root))
        experiment = self.client.get_experiment_by_name(group)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(group)
        tags = {"robustbench_aft.run": name}
        self.run_id = self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id

    def log_metrics(self, values: Dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, step) for key, value in values.items()])

    def log_params(self, params: Dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in params.items()]
        for start in range(0, len(items), 100):  # log_batch takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_artifact(self, folder: Path) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path="model")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
