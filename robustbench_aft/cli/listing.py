"""`bench list`: the registered methods (with every parameter), datasets, archs and attacks."""
from __future__ import annotations

import argparse



def add_to(commands: argparse._SubParsersAction) -> None:
    listing = commands.add_parser("list", help="list registered methods, datasets, archs or attacks")
    listing.add_argument("kind", nargs="?", choices=("methods", "datasets", "archs", "attacks"),
                         help="what to list (default: everything)")
    listing.set_defaults(handler=cmd_list)


def cmd_list(args: argparse.Namespace) -> int:
    from ..leaderboard import format_table
    from ..registry import ATTACKS, DATASETS, METHODS, MODELS

    registries = {"methods": METHODS, "datasets": DATASETS, "archs": MODELS, "attacks": ATTACKS}
    kinds = [args.kind] if args.kind else list(registries)
    for kind in kinds:
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
