"""Is a refactor exact? One training update of every method, short whole fine-tuning runs of three,
and the evaluation attacks, computed by two versions of the code on the same inputs, compared bit
for bit.

    python benchmarks/step_equality.py --against REV     # e.g. --against HEAD~3

checks out REV into a temporary git worktree, runs this script's ``--dump`` in both trees (each
importing its own ``robustbench_aft``), and prints one row per method and attack: ``equal`` when every
tensor is bit-identical, else the largest absolute difference. Uses only APIs both versions share:
the registries, ``Method.prepare``/``configure_optimizers``/``on_fit_start``/``on_epoch_start``/
``update``, ``engine.fine_tune`` and the attack classes. The natural model is trained once here (digits, smallcnn, 5
epochs) and handed to both versions as a file, so they start from the same weights.
"""
from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ATTACKS = ("pgd", "cw")
# Whole fine-tuning runs (2 epochs on 96 images, validation on 32, probe off): the engine around the step.
FINE_TUNED = ("afd", "atas", "trades")


def dump(natural_path: str, output: str) -> None:
    import torch

    import robustbench_aft
    from robustbench_aft import METHODS, load_dataset
    from robustbench_aft.models import build_model
    from robustbench_aft.registry import ATTACKS as ATTACK_REGISTRY

    data = load_dataset("digits")
    model = build_model("smallcnn", data.num_classes, data.input_shape[0], data.mean, data.std)
    model.load_state_dict(torch.load(natural_path, weights_only=True))
    x = torch.stack([data.test[i][0] for i in range(64)])  # no augmentation: the same images in both runs
    y = torch.tensor([data.test[i][1] for i in range(64)])
    index = torch.arange(64)
    results = {"source": robustbench_aft.__file__}
    for name in METHODS.names():
        torch.manual_seed(0)
        method = METHODS.get(name)(eps=0.15)
        method.prepare(copy.deepcopy(model))
        method.optimizers = method.configure_optimizers()
        method.on_fit_start(data.train)
        method.on_epoch_start(1, 5)
        method.train()
        terms = method.update((x, y, index))
        state = {k: v.detach().clone() for k, v in method.trainable_state().state_dict().items()}
        results[name] = {"state": state, "terms": {k: v.detach().clone() for k, v in terms.items()}}
    from robustbench_aft.config import TrainConfig
    from robustbench_aft.engine import fine_tune

    for name in FINE_TUNED:
        tuned = fine_tune(name, copy.deepcopy(model), data, TrainConfig(epochs=2, batch_size=32, train_subset=96,
                                                                        val_size=32),
                          eps=0.15, seed=0, device=torch.device("cpu"), progress=False)
        history = {f"{row['epoch']}:{key}": torch.tensor(value) for row in tuned.history for key, value in row.items()}
        curve = {f"{row['epoch']}:{key}": torch.tensor(value) for row in tuned.validation for key, value in row.items()
                 if key != "seconds"}
        results[f"fine_tune:{name}"] = {"exported": tuned.model.state_dict(), "history": history, "validation": curve}
    model.eval()
    for name in ATTACKS:
        attack = ATTACK_REGISTRY.get(name)(0.15)
        results[f"attack:{name}"] = {"x_adv": attack(model, x, y, seed=3)}
    torch.save(results, output)


def _compare(old, new) -> str:
    import torch

    if isinstance(old, dict):
        if set(old) != set(new):
            return f"different keys: {sorted(set(old) ^ set(new))[:4]}"
        worst = 0.0
        for key in old:
            verdict = _compare(old[key], new[key])
            if verdict.startswith("different"):
                return f"{key}: {verdict}"
            if verdict != "equal":
                worst = max(worst, float(verdict.split()[-1]))
        return "equal" if worst == 0.0 else f"max |difference| {worst:.3g}"
    if torch.equal(old, new):
        return "equal"
    if old.shape != new.shape:
        return f"different shapes {tuple(old.shape)} and {tuple(new.shape)}"
    return f"max |difference| {float((old.double() - new.double()).abs().max()):.3g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", help="the git revision to compare the working tree with")
    parser.add_argument("--dump", nargs=2, metavar=("NATURAL", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dump:
        dump(*args.dump)
        return 0
    if not args.against:
        parser.error("give --against REV")
    import torch

    from robustbench_aft import load_dataset
    from robustbench_aft.pretrained import NaturalRecipe, pretrain

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        old_tree = folder / "old"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(old_tree), args.against],
                       check=True)
        # setup.cfg installs baselines/ as robustbench_aft.baselines; the editable install maps that name
        # to this checkout's folder, so the old tree gets a link to its own.
        link = old_tree / "robustbench_aft" / "baselines"
        if (old_tree / "baselines").is_dir() and not link.exists():
            link.symlink_to(Path("..") / "baselines")
        try:
            model, _ = pretrain(load_dataset("digits"), "smallcnn", NaturalRecipe(epochs=5, batch_size=64, lr=0.05),
                                seed=0, device=torch.device("cpu"), progress=False)
            torch.save(model.state_dict(), folder / "natural.pt")
            outputs = {}
            for label, tree in (("old", old_tree), ("new", REPO)):
                outputs[label] = folder / f"{label}.pt"
                environment = {**os.environ, "PYTHONPATH": str(tree)}
                subprocess.run([sys.executable, str(Path(__file__).resolve()), "--dump", str(folder / "natural.pt"),
                                str(outputs[label])], check=True, cwd=str(tree), env=environment)
            old, new = (torch.load(outputs[k], weights_only=False) for k in ("old", "new"))
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old_tree)], check=False)
    print(f"old: {args.against} ({old.pop('source')}); new: working tree ({new.pop('source')})\n")
    print("| what | compared |\n|---|---|")
    for key in old:
        print(f"| {key} | {_compare(old[key], new.get(key, {}))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
