"""``bench run``: natural model → fine-tune every (method, seed) → evaluate all → store → leaderboard."""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional


from .config import RunConfig
from .data import load_dataset
from .engine import fine_tune
from .evaluate import evaluate
from .pretrained import resolve, save_checkpoint
from .results import ResultsStore, RunRecord, new_group_id
from .runtime import provenance, resolve_device

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What ``run`` did: its group id in the store, the output folder and the run ids."""

    group_id: str
    db: str
    out: str
    run_ids: List[str]
    seconds: float


def run(config: RunConfig, progress: bool = True) -> RunSummary:
    """Run the whole AFT protocol described by ``config`` and store every result."""
    start = time.perf_counter()
    device = resolve_device(config.device)
    data = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download)
    eval_config = dataclasses.replace(config.eval, eps=data.default_eps if config.eval.eps is None else config.eval.eps)
    store = ResultsStore(config.db)
    group_id = new_group_id()
    out_root = Path(config.out) if config.out else Path(config.db).parent / group_id
    stored_config = {**config.to_dict(), "eval": dataclasses.asdict(eval_config)}
    origin = provenance(device)
    total = 1 + len(config.methods) * len(config.seeds)
    log.info("run %s: %s on %s/%s, eps %.4g, %d model(s) to evaluate, results in %s", group_id,
             ",".join(config.methods), data.name, config.arch, eval_config.eps, total, config.db)

    natural, info = resolve(config.pretrained, data, config.arch, seed=config.pretrained_seed, device=device,
                            progress=progress)
    run_ids = []
    cell = time.perf_counter()
    log.info("[1/%d] evaluating the natural model (%s)", total, info["source"])
    result = evaluate(natural, data, eval_config, device, progress=progress)
    run_ids.append(store.add(RunRecord(
        group_id=group_id, method="natural", method_version=0, dataset=data.name, arch=config.arch,
        seed=config.pretrained_seed, eps=result.eps, norm=result.norm, n_eval=result.n, metrics=result.accuracy,
        config={**stored_config, "pretrained_source": info["source"]}, flags=result.flags, provenance=origin,
        wall_seconds=time.perf_counter() - cell)))

    step = 1
    for method in config.methods:
        for seed in config.seeds:
            step += 1
            cell = time.perf_counter()
            log.info("[%d/%d] fine-tuning %s, seed %d", step, total, method, seed)
            out_dir = out_root / f"{method}-seed{seed}"
            tuned = fine_tune(method, natural, data, config.train, eps=eval_config.eps, seed=seed, device=device,
                              params=config.method_params.get(method), out_dir=out_dir, progress=progress)
            save_checkpoint(tuned.model, out_dir / "final.pt", config.arch, data, method=method, seed=seed,
                            method_version=tuned.method_version, params=tuned.params)
            log.info("[%d/%d] %s seed %d: %.1f s, %.0f images/s; evaluating", step, total, method, seed,
                     tuned.seconds, tuned.images_per_second)
            result = evaluate(tuned.model, data, eval_config, device, progress=progress)
            run_ids.append(store.add(RunRecord(
                group_id=group_id, method=method, method_version=tuned.method_version, dataset=data.name,
                arch=config.arch, seed=seed, eps=result.eps, norm=result.norm, n_eval=result.n,
                metrics=result.accuracy, config={**stored_config, "method_params_used": tuned.params,
                                                 "pretrained_source": info["source"]},
                flags=result.flags, provenance=origin, wall_seconds=time.perf_counter() - cell,
                train_seconds=tuned.seconds, images_per_second=tuned.images_per_second)))
    return RunSummary(group_id=group_id, db=config.db, out=str(out_root), run_ids=run_ids,
                      seconds=time.perf_counter() - start)


def leaderboard(db: str, group_id: Optional[str] = None):
    """The aggregated leaderboard of a results store as a pandas DataFrame (see leaderboard.py)."""
    from .leaderboard import leaderboard_frame

    return leaderboard_frame(ResultsStore(db).rows(group_id))


__all__ = ["RunSummary", "leaderboard", "run"]
