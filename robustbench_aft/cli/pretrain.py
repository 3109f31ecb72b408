"""`bench pretrain`: train a natural model and store it in the cache."""
from __future__ import annotations

import argparse

from ..parsing import non_negative_int, parse_arch, positive_float, positive_int
from ._common import ARCH_KWARGS_HELP, add_data_arguments


def add_to(commands: argparse._SubParsersAction) -> None:
    pretrain = commands.add_parser("pretrain", help="train a natural model and store it in the cache")
    add_data_arguments(pretrain)
    pretrain.add_argument("--arch", default="smallcnn", help="architecture (see `bench list archs`)")
    pretrain.add_argument("--arch-kwargs", default=None, metavar="K=V,...", help=ARCH_KWARGS_HELP)
    pretrain.add_argument("--epochs", type=positive_int, default=None, help="epochs (default: the dataset's recipe)")
    pretrain.add_argument("--batch-size", type=positive_int, default=None, help="batch size (default: the recipe's)")
    pretrain.add_argument("--lr", type=positive_float, default=None, help="peak learning rate (default: the recipe's)")
    pretrain.add_argument("--seed", type=non_negative_int, default=0, help="seed (default: 0)")
    pretrain.add_argument("--force", action="store_true", help="retrain even if the cache has this model")
    pretrain.add_argument("--log", default=None, metavar="TRACKER,...",
                          help="experiment trackers, offline: tensorboard, mlflow, wandb (default: none)")
    pretrain.add_argument("--log-dir", default=None, metavar="DIR",
                          help="where the trackers write (default: next to the cached model, <name>.logs/)")
    pretrain.set_defaults(handler=cmd_pretrain)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from dataclasses import asdict
    from pathlib import Path

    import torch  # noqa: F401

    from ..data import load_dataset
    from ..devices import resolve_device
    from ..parsing import parse_trackers
    from ..pretrained import cache_path, default_recipe, pretrain, recipe_with, save_checkpoint
    from ..reproducibility import provenance
    from ..trackers import open_trackers

    arch = parse_arch(args.arch, args.arch_kwargs)
    trackers = parse_trackers(args.log)
    device = resolve_device(args.device)
    data = load_dataset(args.dataset, data_dir=args.data_dir, download=args.download,
                        skip_bad_images=args.skip_bad_images)
    recipe = recipe_with(default_recipe(data), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    path = cache_path(data, arch, args.seed, recipe)
    if path.is_file() and not args.force:
        print(f"cached: {path} (use --force to retrain)")
        return 0
    log_dir = Path(args.log_dir) if args.log_dir else path.with_suffix(".logs")
    tracker = open_trackers(trackers, log_dir, "robustbench-aft-pretrain").cell(path.stem)
    model, info = pretrain(data, arch, recipe, args.seed, device, progress=not args.quiet,
                           on_epoch=tracker.epoch if tracker else None)
    save_checkpoint(model, path, arch, data, recipe=asdict(recipe), seed=args.seed,
                    provenance=provenance(device), **info)
    if tracker:
        # No store row and no attack here: the test accuracy is the result (no interval: it is the whole
        # test split, not a sample), and the natural model's folder comes with `bench export --method natural`.
        tracker.metrics({"eval/test_accuracy": info["test_accuracy"]}, recipe.epochs)
        tracker.params({"arch": arch, "dataset": data.name, "seed": args.seed, **{f"recipe.{k}": v for k, v in
                                                                                   asdict(recipe).items()}})
        tracker.close()
    print(f"natural {arch} on {data.name}: test accuracy {info['test_accuracy']:.2f}% "
          f"({info['seconds']:.1f} s, {info['images_per_second']:.0f} images/s)")
    print(f"saved: {path}")
    if tracker:
        print(f"tracked in {log_dir}")
    return 0
