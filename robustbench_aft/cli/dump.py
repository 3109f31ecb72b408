"""`bench dump`: every finished run of a store as one JSON file each, or the split of one run."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import DEFAULT_DB
from ..errors import ConfigError
from ._common import existing_store


def add_to(commands: argparse._SubParsersAction) -> None:
    dump = commands.add_parser("dump", help="write every finished run of a store as one JSON file (metrics, "
                                            "per-sample outcomes, curves, costs, configuration), or print the "
                                            "split of one run")
    dump.add_argument("--db", default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")
    what = dump.add_mutually_exclusive_group(required=True)
    what.add_argument("--output", help="folder for the run files")
    what.add_argument("--split", metavar="RUN",
                      help="print, as JSON, which training images fine-tuned and validated run RUN (its id or a "
                           "unique prefix) and which test images evaluated it")
    dump.set_defaults(handler=cmd_dump)


def cmd_dump(args: argparse.Namespace) -> int:
    if args.split is not None:
        print(json.dumps(run_split(existing_store(args.db), args.split)))
        return 0
    from ..archive import dump_runs

    written = dump_runs(existing_store(args.db), Path(args.output))
    print(f"wrote {len(written)} run file(s) to {args.output}")
    return 0


def run_split(db: str, run: str) -> dict:
    """The stored split of the run whose id starts with ``run``: index lists of every part."""
    from ..protocol import decode_indices
    from ..results import ResultsStore

    store = ResultsStore(db)
    matches = [row["run_id"] for row in store.runs() if row["run_id"].startswith(run)]
    if len(matches) != 1:
        raise ConfigError(f"--split {run}: {'no run' if not matches else f'{len(matches)} runs'} in {db} "
                          f"{'has' if not matches else 'have'} that id; give the run id (`bench dump --output DIR` "
                          "lists them in the file names)")
    record = store.record(matches[0])
    split = record.config.get("split")
    if not split:
        raise ConfigError(f"run {matches[0]} was stored before splits were recorded; its split can only be rebuilt "
                          "from its seed, --train-subset and --val-size")
    parts = {name: decode_indices(split[name]) if split.get(name) and not split[name].startswith("every") else
             split.get(name) for name in ("fine_tune", "validation")}
    return {"run_id": matches[0], "method": record.method, "seed": record.seed, "dataset": record.dataset,
            "dataset_fingerprint": split.get("dataset_fingerprint"), "train_size": split.get("train_size"),
            **parts, "test": record.indices}
