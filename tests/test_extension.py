"""The extension promise: a component is one file with one decorator line, and nothing else is
edited. Each throw-away component below is registered by this test alone (as a user's own file
would register it) and must flow through to `bench run`, the leaderboard and `bench check`."""
import io

import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from robustbench_aft.attacks import Attack, metric_columns
from robustbench_aft.cli import main
from robustbench_aft.config import build_run_config
from robustbench_aft.data import DataBundle, DataOptions, TensorImageDataset, load_dataset, no_argument
from robustbench_aft.formats import OutputFormat
from robustbench_aft.method import Method, afd_lr
from robustbench_aft.pretrained import NaturalRecipe, default_recipe
from robustbench_aft.registry import ATTACKS, DATASETS, FORMATS, METHODS


@pytest.fixture
def throwaway_components():
    @ATTACKS.register("uniform-noise")
    class UniformNoise(Attack):
        """Uniform noise in the L∞ ball: a throw-away attack registered by a test."""

        column_position = 15  # between pgd (10) and cw (20)

        def perturb(self, model, x, y, generator):
            return (x + torch.empty_like(x).uniform_(-self.eps, self.eps, generator=generator)).clamp(0, 1)

    @METHODS.register("clean-finetune")
    class CleanFineTune(Method):
        """Fine-tuning on clean images: a throw-away method registered by a test."""

        def training_step(self, batch):
            x, y, _ = batch
            return {"loss": F.cross_entropy(self.student(x), y)}

        def lr_at(self, epoch, total_epochs, base_lr):
            return afd_lr(epoch, total_epochs, base_lr)

    @DATASETS.register("digits-five", preset="quick")
    def digits_five(options: DataOptions) -> DataBundle:
        """The digits 0-4 only: a throw-away dataset registered by a test."""
        no_argument(options, "digits-five")
        digits = DATASETS.get("digits")(options)

        def first_five(split, transform=None):
            keep = split.labels < 5
            return TensorImageDataset(split.images[keep], split.labels[keep], transform=transform)

        return DataBundle(name="digits-five", key="digits-five", train=first_five(digits.train, digits.train.transform),
                          test=first_five(digits.test), num_classes=5, input_shape=digits.input_shape,
                          mean=digits.mean, std=digits.std, default_eps=0.15, class_names=digits.class_names[:5],
                          default_val_size=50, natural_recipe={"epochs": 20, "batch_size": 64, "lr": 0.05})

    @FORMATS.register("tsv")
    class TabSeparated(OutputFormat):
        """Tab-separated values: a throw-away output format registered by a test."""

        def table(self, rows, extra=None, as_written=False):
            lines = [list(rows[0])] + [list(r.values()) for r in rows]
            return "\n".join("\t".join(str(value) for value in row) for row in lines)

    yield
    FORMATS.unregister("tsv")
    ATTACKS.unregister("uniform-noise")
    METHODS.unregister("clean-finetune")
    DATASETS.unregister("digits-five")


def _leaderboard(capsys, db):
    capsys.readouterr()
    assert main(["leaderboard", "--db", str(db), "--format", "csv"]) == 0
    return pd.read_csv(io.StringIO(capsys.readouterr().out))


def test_a_new_attack_dataset_method_and_format_reach_the_leaderboard_and_the_check(throwaway_components, capsys,
                                                                            tmp_path, monkeypatch):
    assert metric_columns()[:4] == ["clean", "pgd", "uniform-noise", "cw"]
    # The dataset's registration and bundle carry its run preset and natural recipe.
    assert build_run_config(["clean-finetune"], dataset="digits-five").preset == "quick"
    assert default_recipe(load_dataset("digits-five@16px")) == NaturalRecipe(epochs=20, batch_size=64, lr=0.05)
    monkeypatch.setenv("ROBUSTBENCH_AFT_CACHE", str(tmp_path / "cache"))
    db = tmp_path / "results.db"
    assert main(["run", "--methods", "clean-finetune", "--dataset", "digits-five", "--epochs", "1",
                 "--train-subset", "128", "--attacks", "clean,pgd,uniform-noise", "--db", str(db), "--quiet"]) == 0
    table = _leaderboard(capsys, db)
    assert list(table["method"]) == ["natural", "clean-finetune"]
    metric_order = [c for c in table.columns if c in ("clean", "pgd", "uniform-noise", "worst", "avg")]
    assert metric_order == ["clean", "pgd", "uniform-noise", "worst", "avg"]
    # Noise is far weaker than PGD on a natural model, and the worst case takes the minimum per point.
    assert set(table["dataset"]) == {"digits-five"} and (table["clean"] > 80).all()  # 5 classes, not 10
    natural = table.set_index("method").loc["natural"]
    assert natural["pgd"] < natural["uniform-noise"] <= natural["clean"]
    assert natural["worst"] <= natural["pgd"]
    # The new format is a --format choice of every command that prints a table.
    capsys.readouterr()
    assert main(["leaderboard", "--db", str(db), "--format", "tsv"]) == 0
    header, *lines = capsys.readouterr().out.strip().splitlines()
    assert header.split("\t")[:4] == ["rank", "method", "dataset", "arch"] and len(lines) == 2
    assert "\tuniform-noise\t" in f"\t{header}\t" and lines[1].split("\t")[1] == "clean-finetune"

    # A baseline written before both components existed: the new row and column are reported, not failed.
    old = table[table["method"] == "natural"].drop(columns=[c for c in table.columns if c.startswith("uniform-noise")])
    old.to_csv(tmp_path / "old.csv", index=False)
    capsys.readouterr()
    assert main(["check", "--baseline", str(tmp_path / "old.csv"), "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "NEW: clean-finetune on digits-five/smallcnn Linf eps=0.15 clean, pgd, uniform-noise, worst" in out
    assert "NEW: natural on digits-five/smallcnn Linf eps=0.15 uniform-noise" in out
    assert "check: ok (3 comparisons)" in out  # natural: clean, pgd, worst

    # Once in the baseline, the new attack's column is guarded like any other.
    raised = table.copy()
    raised.loc[raised["method"] == "clean-finetune", "uniform-noise"] += 30.0
    raised.to_csv(tmp_path / "raised.csv", index=False)
    capsys.readouterr()
    assert main(["check", "--baseline", str(tmp_path / "raised.csv"), "--db", str(db)]) == 1
    assert "REGRESSED: clean-finetune on digits-five/smallcnn Linf eps=0.15 uniform-noise" in capsys.readouterr().out


def test_unregister_forgets_the_name_and_its_aliases():
    @METHODS.register("temporary", "temp-alias")
    class Temporary(Method):
        """A method registered for a moment."""

    assert "temp-alias" in METHODS
    METHODS.unregister("temp-alias")
    assert "temporary" not in METHODS and "temp-alias" not in METHODS
