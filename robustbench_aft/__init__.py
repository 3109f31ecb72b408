"""robustbench-aft: benchmark adversarial fine-tuning of pre-trained image classifiers.

The public API::

    from robustbench_aft import load_dataset, resolve, evaluate, EvalConfig
    data = load_dataset("digits")
    model, _ = resolve("auto", data, "smallcnn", seed=0, device=torch.device("cpu"))
    result = evaluate(model, data, EvalConfig(attacks=["clean", "pgd", "aa"]), torch.device("cpu"))

Importing the package registers every built-in model, dataset, attack and method.
"""
from . import (  # noqa: E402,F401  (imported so that their components register)
    afd,
    attacks,
    baselines,  # noqa: E402,F401
    data,
    datasets,
    formats,
    models,
)
from ._version import __version__
from .config import RunConfig, TrainConfig, build_run_config  # noqa: E402
from .data import DataBundle, load_dataset  # noqa: E402
from .engine import FineTuneResult, fine_tune  # noqa: E402
from .evaluator import EvalConfig, EvalResult, evaluate  # noqa: E402
from .pipeline import RunSummary, run  # noqa: E402
from .pretrained import NaturalRecipe, pretrain, resolve  # noqa: E402
from .registry import ATTACKS, DATASETS, FORMATS, METHODS, MODELS  # noqa: E402
from .tables import leaderboard  # noqa: E402

__all__ = [
    "ATTACKS", "DATASETS", "FORMATS", "METHODS", "MODELS", "DataBundle", "EvalConfig", "EvalResult", "FineTuneResult",
    "NaturalRecipe", "RunConfig", "RunSummary", "TrainConfig", "build_run_config", "evaluate", "fine_tune",
    "leaderboard", "load_dataset", "pretrain", "resolve", "run", "__version__",
]
