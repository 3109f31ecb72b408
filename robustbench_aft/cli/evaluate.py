"""`bench eval`: evaluate one checkpoint under the uniform protocol."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..attacks import NORMS
from ..errors import ConfigError
from ..parsing import non_negative_int, parse_arch, positive_int
from ..registry import FORMATS
from ._common import ARCH_KWARGS_HELP, add_data_arguments, add_precision_arguments, human


def add_to(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("eval", help="evaluate a checkpoint under the uniform protocol")
    add_data_arguments(evaluate)
    evaluate.add_argument("--checkpoint", required=True,
                          help="checkpoint path, a model folder (bench export --model), hf-hub:ORG/NAME, "
                               "'auto' (the cached natural model) or robustbench:NAME")
    evaluate.add_argument("--arch", default=None,
                          help="architecture of the checkpoint (default: a model folder's own, else smallcnn)")
    evaluate.add_argument("--arch-kwargs", default=None, metavar="K=V,...", help=ARCH_KWARGS_HELP)
    evaluate.add_argument("--attacks", default="clean,pgd,cw",
                          help="comma-separated attacks (default: clean,pgd,cw; see `bench list attacks`)")
    evaluate.add_argument("--eps", default=None, help="budget, e.g. 8/255 or 0.2 (default: the dataset's)")
    evaluate.add_argument("--norm", default="Linf", choices=NORMS, help="threat model (default: Linf)")
    evaluate.add_argument("--transfer-from", default="natural", metavar="natural|PATH",
                          help="source model of the transfer attack: the cached natural model of --arch "
                               "(default) or a checkpoint")
    evaluate.add_argument("--n-eval", type=positive_int, default=None,
                          help="size of the seeded test subset (default: the whole test set)")
    evaluate.add_argument("--batch-size", type=positive_int, default=None,
                          help="evaluation batch size (default: that of the dataset's preset, as bench run: "
                               "512 for digits, else 256)")
    evaluate.add_argument("--seed", type=non_negative_int, default=0, help="subset and attack seed (default: 0)")
    evaluate.add_argument("--no-sanity", action="store_true", help="skip the extra eps checks on the first batch")
    add_precision_arguments(evaluate)
    evaluate.add_argument("--format", default="md", choices=FORMATS.names(), help="output format")
    evaluate.add_argument("--output", default=None, help="also write the table to this file")
    evaluate.set_defaults(handler=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from ..config import default_eval_batch_size
    from ..data import load_dataset
    from ..devices import in_preferred_memory_format, resolve_device
    from ..evaluator import EvalConfig, evaluate
    from ..files import atomic_write_text
    from ..models.hub import folder_arch, is_model_folder
    from ..parsing import parse_attacks, parse_eps
    from ..pretrained import resolve, transfer_source
    from ..registry import ATTACKS
    from ..tables import format_table

    # None means "not given": a model folder names its arch in config.json; anything else is smallcnn's.
    default_arch = folder_arch(args.checkpoint) if is_model_folder(args.checkpoint) else "smallcnn"
    arch = parse_arch(args.arch or default_arch, args.arch_kwargs)
    attacks = parse_attacks(args.attacks)
    eps = parse_eps(args.eps, args.norm) if args.eps is not None else None
    output = Path(args.output) if args.output else None
    if output is not None and output.is_dir():
        raise ConfigError(f"--output {output} is a directory; give a file name")
    device = resolve_device(args.device)
    data = load_dataset(args.dataset, data_dir=args.data_dir, download=args.download,
                        skip_bad_images=args.skip_bad_images)
    model, info = resolve(args.checkpoint, data, arch, seed=args.seed, device=device, progress=not args.quiet)
    in_preferred_memory_format(model, "auto", device)  # as bench run evaluates (--channels-last auto)
    transfer = any(ATTACKS.get(name).needs_source for name in attacks)
    source = (transfer_source(args.transfer_from, data, arch, device, progress=not args.quiet)
              if transfer else None)
    config = EvalConfig(attacks=attacks, eps=eps, norm=args.norm, n_eval=args.n_eval, seed=args.seed,
                        batch_size=args.batch_size or default_eval_batch_size(args.dataset),
                        sanity=not args.no_sanity, precision=args.eval_precision or "fp32",
                        aa_precision=args.aa_precision or "fp32", bf16_check_share=args.bf16_check_share,
                        bf16_check_min=args.bf16_check_min, eps_text=args.eps,
                        transfer_from=args.transfer_from if transfer else None)
    start = time.perf_counter()
    result = evaluate(model, data, config, device, progress=not args.quiet, source_model=source)
    seconds = time.perf_counter() - start
    table = format_table(result.rows(), args.format,
                         extra={"source": info["source"], "dataset": data.name, "arch": arch, **result.to_dict()})
    if human(args.format):
        table = (f"{arch} on {data.name} ({info['source']}), {result.norm} eps={result.eps:.4g}, "
                 f"n={result.n}, {seconds:.1f} s\n\n{table}")
        for name, parts in result.breakdown.items():
            source = result.budgets.get(name, {}).get("source", "")
            rows = [{"corruption": part, "accuracy": round(value, 2),
                     **{f"s{s}": round(parts.get(f"{part}@{s}", float("nan")), 2) for s in range(1, 6)}}
                    for part, value in parts.items() if "@" not in part]
            table += f"\n\n{name}: {source}, accuracy per corruption and severity\n\n{format_table(rows, args.format)}"
        if result.flags:
            table += "\n\nsanity flags:\n" + "\n".join(f"- {flag}" for flag in result.flags)
        else:
            table += "\n\nsanity flags: none"
    print(table)
    if output is not None:
        atomic_write_text(table + "\n", output)
    return 0
