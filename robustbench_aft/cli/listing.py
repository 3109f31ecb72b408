"""`bench list`: the registered methods (with every parameter), datasets, archs, attacks and output
formats, and the presets of `bench run --preset`."""
from __future__ import annotations

import argparse

KINDS = ("methods", "datasets", "archs", "attacks", "formats", "presets")


def add_to(commands: argparse._SubParsersAction) -> None:
    listing = commands.add_parser("list", help="list registered methods, datasets, archs, attacks, formats or presets")
    listing.add_argument("kind", nargs="?", choices=KINDS, help="what to list (default: everything)")
    listing.set_defaults(handler=cmd_list)


def _preset_rows() -> list:
    from ..config import PRESETS
    from ..data import default_preset
    from ..registry import DATASETS

    # Which datasets run with a preset when none is given (the same rule `bench run` applies), so
    # that `bench list presets` also answers "what does digits run with?".
    default_for = {name: [e.name for e in DATASETS.entries() if default_preset(e.name) == name] for name in PRESETS}
    return [{"name": name, "default for": ", ".join(default_for[name]) or "(only with --preset)",
             "description": preset.get("description", "")} for name, preset in PRESETS.items()]


def cmd_list(args: argparse.Namespace) -> int:
    from ..registry import ATTACKS, DATASETS, FORMATS, METHODS, MODELS
    from ..tables import format_table

    registries = {"methods": METHODS, "datasets": DATASETS, "archs": MODELS, "attacks": ATTACKS, "formats": FORMATS}
    kinds = [args.kind] if args.kind else list(KINDS)
    for kind in kinds:
        if kind == "presets":
            print("## presets (--preset NAME)")
            print(format_table(_preset_rows(), "md"))
            print()
            continue
        registry = registries[kind]
        rows = [{"name": e.name, "aliases": ", ".join(e.aliases), "description": e.description}
                for e in registry.entries()]
        if kind == "methods":
            from ..params import param_docs

            for row, entry in zip(rows, registry.entries()):
                row["version"] = entry.obj.version
                row["source"] = entry.obj.reference
                row["defaults"] = ", ".join(f"{p['name']}={p['default']:.4g}" if isinstance(p["default"], float)
                                            else f"{p['name']}={p['default']}" for p in param_docs(entry.obj.Params))
        print(f"## {kind}")
        print(format_table(rows, "md") if rows else f"(no {kind} registered yet)")
        print()
        if kind == "methods" and rows:
            from ..params import param_docs

            parameters = [{"method": entry.name, "parameter": p["name"],
                           "default": f"{p['default']:.4g}" if isinstance(p["default"], float) else str(p["default"]),
                           "valid values": p["valid"], "meaning": p["help"], "source": p["source"]}
                          for entry in registry.entries() for p in param_docs(entry.obj.Params)]
            from tabulate import tabulate

            print("## method parameters (--set METHOD.PARAMETER=VALUE)")
            # Defaults as written (an int stays an int), not reformatted as floats.
            print(tabulate(parameters, headers="keys", tablefmt="github", disable_numparse=True))
            print()
    return 0
