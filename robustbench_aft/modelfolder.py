"""Model folders in the Hugging Face Hub layout: write one from the store, load one back.

``bench export --model DIR --method M`` writes

* ``model.safetensors``: the weights the store's numbers were measured on (the run's ``final.pt``:
  AFD's folded model, the EMA weights where the recipe used them), as safetensors (no pickle);
* ``config.json``: what rebuilds the network without this run: the arch spec (a built-in name,
  ``timm:``/``torchvision:`` or ``py:`` factory), classes, channels, input size, mean/std;
* ``README.md``: the model card, the Hub's YAML metadata (``library_name``, ``tags``, ``datasets``,
  ``model-index`` with one result per metric) written by ``huggingface_hub``'s own
  ``ModelCardData``/``EvalResult``, then the leaderboard row, budgets, method, recipe, seeds, provenance;
* ``config.yaml``: the run's configuration (``bench run --config`` reproduces the run).

Such a folder, local or on the Hub (``hf-hub:ORG/NAME``, via ``snapshot_download``; the cache only when
``HF_HUB_OFFLINE`` is set), is a ``--checkpoint``/``--pretrained`` source (:func:`.pretrained.resolve`).
Where a folder was written is recorded in the store (table ``model_folders``), so that ``bench report``
links each row to it.
"""
from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .errors import ConfigError
from .extras import require
from .models.hub import CARD, CONFIG_JSON, FOLDER_FILES, FOLDER_FORMAT, HUB_EXTRA, LIBRARY_NAME, RUN_CONFIG, WEIGHTS

# --- writing ----------------------------------------------------------------------------------------------


def _state_for_safetensors(model: nn.Module) -> Dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage (tied weights) or are non-contiguous views;
    # a contiguous copy of each is what a state_dict load needs anyway.
    return {name: tensor.detach().cpu().contiguous().clone() for name, tensor in model.state_dict().items()}


def folder_config(model: nn.Module, arch: str, data, **facts: Any) -> Dict[str, Any]:
    """``config.json``: the arch spec and everything :func:`build_model` needs, plus traceability facts."""
    normalize = getattr(model, "normalize", None)
    mean = [float(v) for v in normalize.mean.flatten()] if normalize is not None else list(data.mean)
    std = [float(v) for v in normalize.std.flatten()] if normalize is not None else list(data.std)
    return {"format": FOLDER_FORMAT, "library_name": LIBRARY_NAME, "architecture": arch,
            "num_classes": data.num_classes, "class_names": list(data.class_names),
            "in_channels": data.input_shape[0], "input_size": list(data.input_shape), "mean": mean, "std": std,
            "dataset": data.name, **facts}


def _check_destination(folder: Path) -> None:
    """A new or empty folder, or one this command wrote before (overwritten); nothing else is touched."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--model {folder} is a file; give a folder to write the model into")
    if folder.is_dir():
        others = sorted(p.name for p in folder.iterdir() if p.name not in FOLDER_FILES)
        if others:
            raise ConfigError(f"--model {folder} is not empty ({', '.join(others[:3])}"
                              f"{', …' if len(others) > 3 else ''}); give a new folder or a model folder "
                              "to overwrite")
    from .files import check_writable

    check_writable(folder, "--model", folder=True)


def export_model_folder(db: str, method: Optional[str], folder: Path, seed: Optional[int] = None,
                        run_id: Optional[str] = None) -> Dict[str, Any]:
    """Write the model folder of ``method`` (its lowest stored seed unless ``seed``), or of the stored run
    ``run_id``, from the store ``db``.

    Everything is read and checked before the first file is written; returns ``config.json`` as a dict
    with ``folder`` and ``card`` (the README text) added."""
    from .export import _chosen_run, load_stored_model
    from .files import atomic_write, atomic_write_text
    from .registry import METHODS, NATURAL
    from .results import ResultsStore

    safetensors_torch = require("safetensors.torch", HUB_EXTRA, "bench export --model")
    require("huggingface_hub", HUB_EXTRA, "bench export --model")
    folder = Path(folder).expanduser()
    _check_destination(folder)
    store = ResultsStore(db)
    if run_id is not None:
        run = next((r for r in store.runs() if r["run_id"] == run_id and r["status"] == "finished"), None)
        if run is None:
            raise ConfigError(f"no finished run {run_id} in {db}")
        name = run["method"]
    else:
        name = method if method == NATURAL else METHODS.canonical(str(method))
        run = _chosen_run(store, name, seed)
    config, checkpoint, data, model = load_stored_model(run, "the model folder is written from it")
    run_config = _run_config_yaml(checkpoint, config)
    facts = {"method": name, "seed": run["seed"], "run_id": run["run_id"], "group_id": run["group_id"],
             "eps": run["eps"], "norm": run["norm"], "package_version": run["package_version"],
             "git_commit": run["git_commit"], "torch_version": run["torch_version"]}
    spec = folder_config(model, run["arch"], data, **facts)
    card = model_card(store, run, config, spec)
    weights = _state_for_safetensors(model)
    metadata = {"format": "pt", "architecture": run["arch"], "run_id": run["run_id"]}

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / WEIGHTS, lambda tmp: safetensors_torch.save_file(weights, tmp, metadata=metadata))
    atomic_write_text(json.dumps(spec, indent=2) + "\n", folder / CONFIG_JSON)
    atomic_write_text(run_config, folder / RUN_CONFIG)
    atomic_write_text(card, folder / CARD)
    # mkstemp's private 0600 would make a folder meant for sharing unreadable to others.
    umask = os.umask(0)
    os.umask(umask)
    for name in FOLDER_FILES:
        os.chmod(folder / name, 0o666 & ~umask)
    record_export(db, run["run_id"], folder)
    return {**spec, "folder": str(folder), "card": card}


def _run_config_yaml(checkpoint: Path, config: Dict[str, Any]) -> str:
    """The run folder's ``config.yaml`` (``--out/<cell>/final.pt`` → ``--out/config.yaml``), else the stored
    configuration as YAML (the natural model's checkpoint lives in the cache, not in a run folder)."""
    for candidate in (checkpoint.parent.parent / RUN_CONFIG, Path(config.get("out") or "") / RUN_CONFIG):
        if candidate.is_file():
            return candidate.read_text()
    import yaml

    keep = {k: v for k, v in config.items() if k not in ("training_history", "checkpoint")}
    return "# the stored configuration of the run (its run folder has no config.yaml)\n" + yaml.safe_dump(keep)


# --- the model card ---------------------------------------------------------------------------------------


def _percent(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def _or(value: Any, default: str) -> Any:
    return default if value is None else value


def _number(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _card_results(record, run: Dict[str, Any], protocol: Dict[str, Any], task: str,
                  eps_text: str) -> Tuple[List[Any], List[str]]:
    """The Hub's eval results of the stored run and the rows of the card's "This model" table."""
    from huggingface_hub import EvalResult

    from .attacks import metric_columns
    from .stats import interval_for

    dataset = run["dataset"]
    results, this_model = [], []
    order = {metric: position for position, metric in enumerate(metric_columns())}
    for metric, value in sorted(record.metrics.items(), key=lambda item: (order.get(item[0], len(order)), item[0])):
        low, high = interval_for([value], run["n_eval"]) if metric != "avg" else (math.nan, math.nan)
        budget = "; ".join(protocol["budgets"].get(metric, [])) or ("per point, the worst of the attacks above"
                                                                    if metric == "worst" else None)
        results.append(EvalResult(task_type=task, dataset_type=dataset, dataset_name=dataset, dataset_split="test",
                                  metric_type=f"{metric}_accuracy", metric_value=round(float(value), 2),
                                  metric_name=f"{metric} accuracy ({run['norm']} eps={eps_text})",
                                  metric_config=budget))
        interval = "" if math.isnan(low) else f" [{low:.1f}, {high:.1f}]"
        this_model.append(f"| {metric} | {_percent(value)}{interval} | {budget or ''} |")
    return results, this_model


def _card_evaluation_lines(run: Dict[str, Any], config: Dict[str, Any], board, protocol: Dict[str, Any],
                           this_model: List[str], eps_text: str) -> List[str]:
    """The card's markdown from its title through the threat model and attacks."""
    from .formats.markdown import Markdown
    from .tables import INTERVAL_LEGEND, display_rows

    method, dataset = run["method"], run["dataset"]
    evaluation = config.get("eval", {})
    leaderboard_row = Markdown().table(display_rows(board)) if not board.empty else "(no row)"
    return [
        f"# {method} fine-tuned {run['arch']} on {dataset} ({run['norm']} eps = {eps_text})", "",
        f"Adversarially fine-tuned with **{method}** (method version {run['method_version']}) by robustbench-aft "
        f"from the natural model `{config.get('pretrained_source')}`.",
        "The weights (`model.safetensors`) are the run's `final.pt` as evaluated (AFD's folded model, the EMA "
        "weights where the recipe used EMA): the ones the numbers below were measured on.", "",
        "## Leaderboard row", "",
        f"Over every stored seed of {method} in this setting ({int(board['seeds'].iloc[0]) if not board.empty else 0}"
        f" seed(s), {run['n_eval']} test points each):", "", leaderboard_row, "", INTERVAL_LEGEND + ".", "",
        f"## This model (seed {run['seed']})", "",
        "| metric | accuracy % [95 % Wilson interval] | attack budget |", "|---|---|---|", *this_model, "",
        "## Threat model and attacks", "",
        f"- Threat model: {run['norm']}, eps = {eps_text} (inputs in [0, 1]).",
        *[f"- {metric}: {', '.join(texts)}" for metric, texts in protocol["budgets"].items()],
        f"- Evaluated on {run['n_eval']} test points ("
        + ("the whole test split)." if evaluation.get("n_eval") is None
           else f"a seeded subset, seed {evaluation.get('seed')})."), "",
    ]


def _card_recipe_lines(record, run: Dict[str, Any], config: Dict[str, Any], spec: Dict[str, Any]) -> List[str]:
    """The card's markdown from the method through training, provenance and use."""
    from .registry import METHODS

    method, dataset = run["method"], run["dataset"]
    method_doc = ""
    if method in METHODS:
        method_doc = (METHODS.entry(method).description or "").strip()
    params = config.get("method_params_used") or {}
    train = config.get("train", {})
    evaluation = config.get("eval", {})
    return [
        "## Method", "",
        f"- {method}: {method_doc}" if method_doc else f"- {method}",
        f"- Parameters: {', '.join(f'{k} = {_number(v)}' for k, v in sorted(params.items())) or 'none'}", "",
        "## Training data and recipe", "",
        f"- Dataset: {dataset} ({spec['num_classes']} classes, input {tuple(spec['input_size'])}, "
        f"mean {spec['mean']}, std {spec['std']}); training subset: {train.get('train_subset') or 'all'}, "
        f"validation images held out: {_or(train.get('val_size'), 'the dataset default')}.",
        f"- Fine-tuning: {train.get('epochs')} epochs, batch {train.get('batch_size')}, SGD lr {train.get('lr')}, "
        f"momentum {train.get('momentum')}, weight decay {train.get('weight_decay')}, EMA {train.get('ema')}, "
        f"precision {(config.get('precision') or {}).get('fine_tuning')}, weights selected: {run.get('selection')} "
        f"(epoch {run.get('selected_epoch')}).",
        f"- Natural model: `{config.get('pretrained')}` → `{config.get('pretrained_source')}` "
        f"(pre-training seed {config.get('pretrained_seed')}).", "",
        "## Seeds and provenance", "",
        f"- Fine-tuning seed {run['seed']}; pre-training seed {config.get('pretrained_seed')}; evaluation seed "
        f"{evaluation.get('seed')}.",
        f"- robustbench-aft {run['package_version']}, commit {run['git_commit'] or 'unknown'}, torch "
        f"{run['torch_version']}, device {run['device']}.",
        f"- Run {run['run_id']} of group {run['group_id']}, stored "
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(run['created_at']))}.",
        f"- Flags: {', '.join(record.flags) or 'none'}.", "",
        "## Use", "",
        "```bash",
        "bench eval --checkpoint PATH_OR_hf-hub:ORG/NAME --dataset " + dataset,
        "```", "",
        "```python",
        "from robustbench_aft import load_dataset, resolve",
        f"data = load_dataset({dataset!r})",
        f"model, info = resolve('PATH_OR_hf-hub:ORG/NAME', data, {run['arch']!r}, seed=0, device='cpu')",
        "```",
    ]


def model_card(store, run: Dict[str, Any], config: Dict[str, Any], spec: Dict[str, Any]) -> str:
    """The README: the Hub's YAML header (via ``huggingface_hub``), then the evaluation in words."""
    from huggingface_hub import ModelCard, ModelCardData

    from .captions import table_protocol
    from .tables import leaderboard_frame

    record = store.record(run["run_id"])
    setting_rows = [row for row in store.rows() if row["method"] == run["method"] and row["dataset"] == run["dataset"]
                    and row["arch"] == run["arch"] and row["norm"] == run["norm"]
                    and abs(row["eps"] - run["eps"]) < 1e-6]
    board = leaderboard_frame(setting_rows, mix_budgets=True)
    protocol = table_protocol([row for row in setting_rows if row["run_id"] == run["run_id"]])
    method = run["method"]
    task, dataset, eps_text = "image-classification", run["dataset"], f"{run['eps']:.4g}"
    results, this_model = _card_results(record, run, protocol, task, eps_text)
    tags = [LIBRARY_NAME, "adversarial-robustness", "adversarial-fine-tuning", method, run["norm"]]
    card_data = ModelCardData(library_name=LIBRARY_NAME, tags=tags, datasets=[dataset], metrics=["accuracy"],
                              model_name=f"{method}-{run['arch']}-{dataset}-seed{run['seed']}".replace(":", "-"),
                              pipeline_tag=task, eval_results=results)
    lines = (_card_evaluation_lines(run, config, board, protocol, this_model, eps_text)
             + _card_recipe_lines(record, run, config, spec))
    content = f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"
    return str(ModelCard(content))


# --- the store's record of exports ------------------------------------------------------------------------

_EXPORTS_TABLE = ("CREATE TABLE IF NOT EXISTS model_folders (run_id TEXT PRIMARY KEY, path TEXT NOT NULL, "
                  "written_at REAL NOT NULL)")


def record_export(db: str, run_id: str, folder: Path) -> None:
    """Remember in the store where ``run_id``'s model folder was written (the latest export wins)."""
    # closing(): sqlite3's own context manager commits but leaves the connection (and its WAL files) open.
    with closing(sqlite3.connect(db, timeout=30)) as connection, connection:
        connection.execute(_EXPORTS_TABLE)
        connection.execute("INSERT OR REPLACE INTO model_folders VALUES (?, ?, ?)",
                           (run_id, str(Path(folder).resolve()), time.time()))


def exported_folders(db: str) -> Dict[str, str]:
    """run id → the model folder last exported from it (empty for a store without exports)."""
    with closing(sqlite3.connect(db, timeout=30)) as connection:
        exists = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'model_folders'")
        if exists.fetchone() is None:
            return {}
        return dict(connection.execute("SELECT run_id, path FROM model_folders"))


__all__ = ["export_model_folder", "exported_folders", "record_export"]
