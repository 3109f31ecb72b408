"""What the sub-commands share: argument types and groups, help texts, output helpers."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

from ..errors import ConfigError, not_a_file_reason
from ..parsing import positive_int


class BenchArgumentParser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line (and exit 2) instead of usage + message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message}")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="digits",
                        help="dataset name or folder:PATH (default: digits, bundled with scikit-learn)")
    parser.add_argument("--data-dir", default=None, help="root folder of downloadable datasets (default: ./data)")
    parser.add_argument("--download", action="store_true", help="let torchvision download a missing dataset")
    parser.add_argument("--skip-bad-images", action="store_true", help=SKIP_BAD_IMAGES_HELP)
    parser.add_argument("--image-size", type=positive_int, default=None,
                        help="resize every split to N×N (e.g. 224 for an ImageNet model on CIFAR); the dataset is "
                             "then named DATASET@Npx and eps is in pixels of the resized images")
    parser.add_argument("--mean", default=None, metavar="M1,M2,M3", help=MEAN_HELP)
    parser.add_argument("--std", default=None, metavar="S1,S2,S3", help=STD_HELP)
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or log lines")


def add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    """``--eval-precision``, ``--aa-precision`` and the verified-bf16 check share, as `bench run` has them."""
    from ..config import AA_PRECISION_HELP, BF16_CHECK_MIN_HELP, BF16_CHECK_SHARE_HELP, EVAL_PRECISION_HELP
    from ..parsing import share

    parser.add_argument("--eval-precision", default=None, choices=("fp32", "bf16"), help=EVAL_PRECISION_HELP)
    parser.add_argument("--aa-precision", default=None, choices=("fp32", "bf16"), help=AA_PRECISION_HELP)
    parser.add_argument("--bf16-check-share", type=share, default=0.1, help=BF16_CHECK_SHARE_HELP)
    parser.add_argument("--bf16-check-min", type=positive_int, default=200, help=BF16_CHECK_MIN_HELP)


SKIP_BAD_IMAGES_HELP = ("leave out the images of a folder: dataset that cannot be read (counted in the run's record) "
                        "instead of refusing the dataset")

ARCH_KWARGS_HELP = ("keyword arguments of an external --arch (timm:, torchvision:, py:), e.g. img_size=32; "
                    "they become part of the arch's name: timm:vit_tiny_patch16_224[img_size=32]")


SELECT_HELP = ("which weights of each fine-tuned model: last (default) or best-val (the best validated epoch; "
               "stored by runs with --select best-val)")


COLUMNS_HELP = ("cost columns to show in Markdown, comma-separated: cost (all), fine_tune_s, eval_s, "
                "forward_per_image, backward_per_image, epoch (CSV and JSON always carry them)")


MEAN_HELP = ("per-channel mean of the model's Normalize layer, overriding the dataset's and any the model "
             "declares (one value for every channel, or one per channel); the dataset is then named DATASET@mean=…")


STD_HELP = "per-channel std of the model's Normalize layer (as --mean); the dataset is then named DATASET@std=…"


def human(fmt: str) -> bool:
    """Whether ``--format fmt`` is for people (headers and legends around the table) or for parsing."""
    from ..tables import output_format

    return output_format(fmt).human


def existing_store(db: str, hint: str = "run `bench run --methods ...` first") -> str:
    reason = not_a_file_reason(db)
    if reason:
        raise ConfigError(f"--db {db} {reason}" + (f"; {hint}" if reason == "does not exist" else ""))
    return db


def output_folder(text: str) -> Path:
    from ..files import check_writable

    check_writable(text, "--output", folder=True)
    return Path(text)


def setup_logging(quiet: bool) -> None:
    # Under torchrun only rank 0 reports progress; the other ranks keep warnings and errors.
    rank = int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    level = logging.WARNING if quiet or rank > 0 else logging.INFO
    logging.basicConfig(level=level, format="bench: %(message)s" if rank == 0 else f"bench[rank {rank}]: %(message)s",
                        stream=sys.stderr)
    # The terminal shows INFO and up; the run's log file (pipeline.py) also gets DEBUG lines, which
    # pass through these handlers too, so the level is theirs, not only the root logger's.
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)


def selection(value: str) -> str:
    from ..validation import SELECTIONS

    if value not in SELECTIONS:
        raise ConfigError(f"--select must be one of {', '.join(SELECTIONS)}, got {value!r}")
    return value


def report_collect(report, db: str, out: str, argv: Optional[List[str]], fmt: str, show_leaderboard) -> int:
    print(report.table(), file=sys.stderr)
    if not report.complete:
        unfinished = [c.cell for c in report.cells if c.status != "ingested"]
        hint = (f"resubmit them with: {resume_command(argv, out)}" if argv
                else "resubmit them with the same bench run command plus --resume")
        print(f"bench: {len(unfinished)} cell(s) not finished ({', '.join(unfinished)}); {hint}", file=sys.stderr)
        return 1
    show_leaderboard()
    return 0


log = logging.getLogger("robustbench_aft")


def resume_command(argv: List[str], out: str) -> str:
    """The command that continues an interrupted ``bench run``: the same one with --out and --resume."""
    import shlex

    arguments = list(argv)
    if "--out" not in arguments and not any(a.startswith("--out=") for a in arguments):
        arguments += ["--out", out]
    if "--resume" not in arguments:
        arguments.append("--resume")
    launcher = "bench "
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:  # resume with the same number of processes (last.pt requires it)
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        launcher = f"torchrun --nnodes={world_size // per_node} --nproc_per_node={per_node} --no-python bench "
    return launcher + " ".join(shlex.quote(a) for a in arguments)
