"""`bench analyze`: feature gap, eps curve, trade-off and training-curve plots."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DEFAULT_DB
from ..parsing import parse_arch, positive_int
from ._common import (
    ARCH_KWARGS_HELP,
    MEAN_HELP,
    SKIP_BAD_IMAGES_HELP,
    STD_HELP,
    BenchArgumentParser,
    existing_store,
    output_folder,
)


def add_to(commands: argparse._SubParsersAction) -> None:
    analyze = commands.add_parser("analyze", help="plots: the feature gap and training curves per epoch, robust "
                                                   "accuracy against eps, the clean-robust trade-off")
    analyses = analyze.add_subparsers(dest="analysis", metavar="ANALYSIS", parser_class=BenchArgumentParser)
    analyses.required = True
    gap = analyses.add_parser("feature-gap", help="CSV + PNG of the natural/adversarial feature gap per epoch")
    gap.add_argument("--db", default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")
    gap.add_argument("--methods", default=None, help="comma-separated methods (default: every method in the store)")
    gap.add_argument("--output", default="runs/analysis", help="output folder (default: runs/analysis)")
    gap.set_defaults(handler=cmd_analyze_feature_gap)
    curve = analyses.add_parser("eps-curve", help="CSV + PNG of robust accuracy against eps (PGD-20, AutoAttack)")
    source = curve.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", default=None, help="one model: a checkpoint path, auto or robustbench:NAME")
    source.add_argument("--db", default=None, help="every method's newest models in a results store")
    curve.add_argument("--methods", default=None, help="with --db: comma-separated methods (default: all)")
    curve.add_argument("--dataset", default="digits", help="with --checkpoint: the dataset (default: digits)")
    curve.add_argument("--image-size", type=positive_int, default=None, help="with --checkpoint: resize to N×N")
    curve.add_argument("--mean", default=None, metavar="M1,M2,M3", help="with --checkpoint: " + MEAN_HELP)
    curve.add_argument("--std", default=None, metavar="S1,S2,S3", help="with --checkpoint: " + STD_HELP)
    curve.add_argument("--arch", default="smallcnn", help="with --checkpoint: the architecture (default: smallcnn)")
    curve.add_argument("--arch-kwargs", default=None, metavar="K=V,...", help=ARCH_KWARGS_HELP)
    curve.add_argument("--data-dir", default=None, help="root folder of downloadable datasets")
    curve.add_argument("--skip-bad-images", action="store_true", help=SKIP_BAD_IMAGES_HELP)
    curve.add_argument("--eps-values", default=None,
                       help="comma-separated budgets, e.g. 0,2/255,4/255,8/255 (default: 0 to 2× the dataset's eps)")
    curve.add_argument("--aa-eps", default="", help="budgets at which AutoAttack also runs (default: none)")
    curve.add_argument("--n-eval", type=positive_int, default=None,
                       help="seeded test subset (default: 500 or the whole test set if smaller)")
    curve.add_argument("--output", default="runs/analysis", help="output folder (default: runs/analysis)")
    curve.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    curve.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    curve.set_defaults(handler=cmd_analyze_eps_curve)

    tradeoff = analyses.add_parser("tradeoff", help="CSV + PNG of clean against robust accuracy with 95 %% intervals")
    tradeoff.add_argument("--db", default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")
    tradeoff.add_argument("--metric", default=None, help="the robust metric (default: worst, else aa, else pgd)")
    tradeoff.add_argument("--output", default="runs/analysis", help="output folder (default: runs/analysis)")
    tradeoff.set_defaults(handler=cmd_analyze_tradeoff)

    training = analyses.add_parser("training", help="CSV + PNG of every loss term and the validation accuracy per "
                                                    "fine-tuning epoch")
    training.add_argument("--db", default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")
    training.add_argument("--output", default="runs/analysis", help="output folder (default: runs/analysis)")
    training.set_defaults(handler=cmd_analyze_training)


def cmd_analyze_feature_gap(args: argparse.Namespace) -> int:
    from ..analysis import analyze_feature_gap
    from ..tables import format_table

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    summary, plots = analyze_feature_gap(existing_store(args.db), output_folder(args.output), methods)
    print(format_table(summary.round(4).to_dict("records"), "md"))
    print(f"\nwrote {Path(args.output) / 'feature_gap.csv'} and " + ", ".join(str(p) for p in plots))
    return 0


def cmd_analyze_tradeoff(args: argparse.Namespace) -> int:
    from ..analysis import analyze_tradeoff
    from ..tables import format_table

    frame, plots = analyze_tradeoff(existing_store(args.db), output_folder(args.output), args.metric)
    print(format_table(frame.round(2).to_dict("records"), "md"))
    print(f"\nwrote {Path(args.output) / 'tradeoff.csv'} and " + ", ".join(str(p) for p in plots))
    return 0


def cmd_analyze_training(args: argparse.Namespace) -> int:
    from ..analysis import analyze_training
    from ..tables import format_table

    frame, plots = analyze_training(existing_store(args.db), output_folder(args.output))
    validation = frame[frame["quantity"].str.startswith("validation/")]
    if not validation.empty:
        table = validation.pivot_table(index=["method", "seed", "epoch"], columns="quantity", values="value")
        print(format_table(table.round(2).reset_index().to_dict("records"), "md"))
    print(f"\nwrote {Path(args.output) / 'training_curves.csv'} and " + ", ".join(str(p) for p in plots))
    return 0


def cmd_analyze_eps_curve(args: argparse.Namespace) -> int:
    from ..analysis import eps_curve, models_from_store, parse_eps_values, plot_eps_curve
    from ..data import load_dataset
    from ..devices import resolve_device
    from ..files import atomic_write_text
    from ..pretrained import load_checkpoint, resolve
    from ..tables import format_table

    device = resolve_device(args.device)
    output = output_folder(args.output)
    aa_eps = parse_eps_values(args.aa_eps) if args.aa_eps.strip() else []
    if args.db is not None:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
        sources, dataset, arch = models_from_store(existing_store(args.db), methods)
        data = load_dataset(dataset, data_dir=args.data_dir, skip_bad_images=args.skip_bad_images)
        models = {method: [load_checkpoint(path, data, arch)[0].to(device) for path, _, _ in entries]
                  for method, entries in sources.items()}
    else:
        arch = parse_arch(args.arch, args.arch_kwargs)
        data = load_dataset(args.dataset, data_dir=args.data_dir, skip_bad_images=args.skip_bad_images)
        model, info = resolve(args.checkpoint, data, arch, seed=0, device=device, progress=not args.quiet)
        models = {Path(info["source"]).stem: [model]}
    eps_values = (parse_eps_values(args.eps_values) if args.eps_values
                  else [data.default_eps * f for f in (0, 0.25, 0.5, 1, 1.5, 2)])
    eps_values = sorted(set(eps_values) | set(aa_eps))
    n_eval = args.n_eval if args.n_eval is not None else min(500, len(data.test))
    frame = eps_curve(models, data, eps_values, aa_eps, n_eval, device, progress=not args.quiet)
    atomic_write_text(frame.to_csv(index=False, float_format="%.6g"), output / "eps_curve.csv")
    title = f"Robust accuracy against eps: {data.name.rsplit('/', 1)[-1]}, {arch}, n={n_eval}"
    plot = plot_eps_curve(frame, output / "eps_curve.png", title)
    table = frame.groupby(["method", "attack", "eps"], sort=False)["accuracy"].mean().reset_index()
    table["eps×255"] = (table["eps"] * 255).round(3)
    print(format_table(table[["method", "attack", "eps×255", "accuracy"]].round(2).to_dict("records"), "md"))
    print(f"\nwrote {output / 'eps_curve.csv'} and {plot}")
    return 0
