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
from robustbench_aft.method import Method
from robustbench_aft.registry import ATTACKS, METHODS


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

    yield
    ATTACKS.unregister("uniform-noise")
    METHODS.unregister("clean-finetune")


def _leaderboard(capsys, db):
    capsys.readouterr()
    assert main(["leaderboard", "--db", str(db), "--format", "csv"]) == 0
    return pd.read_csv(io.StringIO(capsys.readouterr().out))


def test_a_new_attack_and_method_reach_the_leaderboard_and_the_check(throwaway_components, capsys, tmp_path):
    assert metric_columns()[:4] == ["clean", "pgd", "uniform-noise", "cw"]
    db = tmp_path / "results.db"
    assert main(["run", "--methods", "clean-finetune", "--epochs", "1", "--train-subset", "128", "--val-size", "0",
                 "--attacks", "clean,pgd,uniform-noise", "--n-eval", "60", "--db", str(db), "--quiet"]) == 0
    table = _leaderboard(capsys, db)
    assert list(table["method"]) == ["natural", "clean-finetune"]
    metric_order = [c for c in table.columns if c in ("clean", "pgd", "uniform-noise", "worst", "avg")]
    assert metric_order == ["clean", "pgd", "uniform-noise", "worst", "avg"]
    # Noise is far weaker than PGD on a natural model, and the worst case takes the minimum per point.
    natural = table.set_index("method").loc["natural"]
    assert natural["pgd"] < natural["uniform-noise"] <= natural["clean"]
    assert natural["worst"] <= natural["pgd"]

    # A baseline written before both components existed: the new row and column are reported, not failed.
    old = table[table["method"] == "natural"].drop(columns=[c for c in table.columns if c.startswith("uniform-noise")])
    old.to_csv(tmp_path / "old.csv", index=False)
    capsys.readouterr()
    assert main(["check", "--baseline", str(tmp_path / "old.csv"), "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "NEW: clean-finetune on digits/smallcnn eps=0.15 clean, pgd, uniform-noise, worst" in out
    assert "NEW: natural on digits/smallcnn eps=0.15 uniform-noise" in out
    assert "check: ok (3 comparisons)" in out  # natural: clean, pgd, worst

    # Once in the baseline, the new attack's column is guarded like any other.
    raised = table.copy()
    raised.loc[raised["method"] == "clean-finetune", "uniform-noise"] += 30.0
    raised.to_csv(tmp_path / "raised.csv", index=False)
    capsys.readouterr()
    assert main(["check", "--baseline", str(tmp_path / "raised.csv"), "--db", str(db)]) == 1
    assert "REGRESSED: clean-finetune on digits/smallcnn eps=0.15 uniform-noise" in capsys.readouterr().out


def test_unregister_forgets_the_name_and_its_aliases():
    @METHODS.register("temporary", "temp-alias")
    class Temporary(Method):
        """A method registered for a moment."""

    assert "temp-alias" in METHODS
    METHODS.unregister("temp-alias")
    assert "temporary" not in METHODS and "temp-alias" not in METHODS
