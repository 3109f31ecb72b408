"""`bench export`: a stored model as a Hugging Face model folder (``--model``), or its worst-case
adversarial images for external evaluation (``--adversarial``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DEFAULT_DB
from ..errors import ConfigError
from ..parsing import non_negative_int
from ._common import existing_store


def add_to(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="write a stored model as a Hugging Face model folder (--model DIR), "
                                                "or its worst-case adversarial images (.pt) and model-info JSON "
                                                "for external evaluation (--adversarial)")
    export.add_argument("--db", default=DEFAULT_DB, help=f"results store (default: {DEFAULT_DB})")
    export.add_argument("--method", required=True, help="the method whose model to export (or natural)")
    export.add_argument("--seed", type=non_negative_int, default=None, help="which seed (default: the lowest stored)")
    export.add_argument("--adversarial", default=None, metavar="PATH.pt",
                        help="the tensor file to write; the model info goes next to it as PATH.json")
    export.add_argument("--model", default=None, metavar="DIR",
                        help="the folder to write: model.safetensors, config.json, README.md (model card), config.yaml")
    export.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    export.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    export.set_defaults(handler=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ..devices import resolve_device
    from ..export import export_adversarial

    if (args.model is None) == (args.adversarial is None):
        raise ConfigError("bench export: give --model DIR (a model folder) or --adversarial PATH.pt (the images)")
    if args.model is not None:
        from ..modelfolder import export_model_folder

        spec = export_model_folder(existing_store(args.db), args.method, Path(args.model), seed=args.seed)
        print(f"{spec['method']} seed {spec['seed']} ({spec['architecture']} on {spec['dataset']}): model folder "
              f"written to {spec['folder']} (model.safetensors, config.json, README.md, config.yaml)")
        return 0
    output = Path(args.adversarial)
    if output.suffix != ".pt":
        raise ConfigError(f"--adversarial {output}: give a .pt file name")
    if output.is_dir():
        raise ConfigError(f"--adversarial {output} is a directory; give a file name")
    info = export_adversarial(existing_store(args.db), args.method, output, resolve_device(args.device),
                              seed=args.seed, progress=not args.quiet)
    print(f"{info['model_info']['name']} seed {info['seed']}: {info['shape'][0]} adversarial images "
          f"{tuple(info['shape'][1:])} written to {output}, model info to {output.with_suffix('.json')}; "
          f"accuracy on them {info['worst_accuracy_of_the_images']:.2f} % (stored worst: "
          f"{info['worst_accuracy_stored']:.2f} %)")
    return 0
