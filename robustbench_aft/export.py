"""``bench export``: the worst-case adversarial images of one stored model, for external evaluation.

RobustBench's external-evaluation template asks for the adversarial examples of the evaluated
points as one tensor and for the model's ``model_info`` JSON. The images are not stored (they would
dwarf the store), so they are recomputed from the model's checkpoint with the run's own evaluation
protocol (:func:`.evaluator.worst_case_examples`), and checked: the model's accuracy on them must be
the stored ``worst`` accuracy.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from .config import EvalConfig
from .errors import ConfigError
from .files import atomic_torch_save, atomic_write_text
from .registry import ATTACKS, METHODS, NATURAL
from .results import ResultsStore


def load_stored_model(run: Dict[str, Any], purpose: str) -> Tuple[Dict[str, Any], Path, Any, torch.nn.Module]:
    """A stored run's configuration, checkpoint path, dataset (read as the run read it) and model, or a
    one-line error when the checkpoint is gone (``purpose`` says what needs it)."""
    from .data import load_dataset
    from .pretrained import load_checkpoint

    config = json.loads(run["config_json"])
    checkpoint = config.get("checkpoint") or config.get("pretrained_source")
    if not checkpoint or not Path(checkpoint).is_file():
        raise ConfigError(f"the checkpoint of {run['method']} seed {run['seed']} is gone ({checkpoint}); "
                          f"{purpose}")
    data = load_dataset(run["dataset"], data_dir=config.get("data_dir"),
                        skip_bad_images=bool(config.get("skip_bad_images")))
    model, _ = load_checkpoint(checkpoint, data, run["arch"])
    return config, Path(checkpoint), data, model


def stored_eval_config(config: Dict[str, Any]) -> EvalConfig:
    """The evaluation settings a run stored, as an EvalConfig (fields added since keep their defaults)."""
    known = {f.name for f in dataclasses.fields(EvalConfig)}
    return EvalConfig(**{k: v for k, v in config.get("eval", {}).items() if k in known})


def _chosen_run(store: ResultsStore, method: str, seed: Optional[int]) -> Dict[str, Any]:
    runs = [run for run in store.runs(selection="last") if run["status"] == "finished" and run["method"] == method
            and (seed is None or run["seed"] == seed)]
    if not runs:
        raise ConfigError(f"no finished run of {method}" + (f" seed {seed}" if seed is not None else "")
                          + f" in {store.path}")
    settings = {(run["dataset"], run["arch"], run["norm"], round(run["eps"], 6)) for run in runs}
    if len(settings) > 1:
        raise ConfigError(f"{method} has runs in several settings ({len(settings)}); export from a store of one run")
    seeds = sorted({run["seed"] for run in runs})
    return [run for run in runs if run["seed"] == seeds[0]][-1]


def export_adversarial(db: str, method: str, output: Path, device: torch.device, seed: Optional[int] = None,
                       progress: bool = True) -> Dict[str, Any]:
    """Write the worst-case adversarial images of ``method`` (its lowest stored seed unless ``seed``)
    to ``output`` (a tensor, RobustBench's template) and ``output`` with ``.json`` (model info, labels,
    indices, the attack behind each image); returns that JSON as a dict."""
    from .evaluator import worst_case_examples
    from .pretrained import transfer_source
    from .tables import leaderboard_frame, robustbench_entry

    name = method if method == NATURAL else METHODS.canonical(method)
    store = ResultsStore(db)
    run = _chosen_run(store, name, seed)
    config, checkpoint, data, model = load_stored_model(run, "the images are recomputed from it")
    eval_config = stored_eval_config(config)
    model = model.to(device).eval()
    source = None
    if any(ATTACKS.get(attack).needs_source for attack in eval_config.attacks):
        spec = eval_config.transfer_from
        natural_file = config.get("pretrained_source")
        if spec in (None, "natural") and natural_file and Path(natural_file).is_file():
            spec = config["pretrained_source"]
        source = transfer_source(spec, data, run["arch"], device, progress=progress)
    images, labels, indices, origins = worst_case_examples(model, data, eval_config, device, source, progress)
    with torch.no_grad():
        correct = sum(int((model(images[i:i + 256].to(device)).argmax(1).cpu() == labels[i:i + 256]).sum())
                      for i in range(0, len(labels), 256))
    accuracy = 100.0 * correct / max(1, len(labels))
    stored = store.record(run["run_id"]).metrics.get("worst")
    rows = [row for row in store.rows() if row["run_id"] == run["run_id"]]
    entry = robustbench_entry(leaderboard_frame(rows, mix_budgets=True).to_dict("records")[0],
                              [m for m in ("clean", "pgd", "cw", "aa") if any(r["metric"] == m for r in rows)])
    info = {"model_info": entry, "checkpoint": str(checkpoint), "seed": run["seed"], "run_id": run["run_id"],
            "images": str(output), "shape": list(images.shape), "indices": indices, "labels": labels.tolist(),
            "attack_of_each_image": origins, "attacks": eval_config.attacks,
            "worst_accuracy_stored": stored, "worst_accuracy_of_the_images": accuracy}
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(images, output)
    atomic_write_text(json.dumps(info, indent=1) + "\n", output.with_suffix(".json"))
    return info
