"""Every registered method, run end to end on digits, raises PGD accuracy above the natural model's."""
import io

import pandas as pd
import pytest

from robustbench_aft.cli import main
from robustbench_aft.registry import METHODS

# Fine-tunes every method (about two minutes on 2 cores): the slow tier.
pytestmark = pytest.mark.slow

# Measured with exactly this command on 2 CPU cores (5 epochs, eps 0.15, 200 test points, seed 0):
# natural 0.0 % PGD-20 (clean 99.0); afd 65.5, vaft 60.0, trades 24.0 (clean 69.0), mart 43.5
# (clean 80.5), twins-at 47.5, twins-trades 21.0, rift 44.0, arrest 61.0, afkd 62.0, free-at 63.0,
# fgsm-ga 49.0, atas 47.0. The TRADES family with β = 6 is the unstable one on digits (over three
# seeds its clean accuracy is 84 ± 4 and one seed lands at 69), hence its lower bars. The other
# margins leave about 15 points of slack for other machines and torch versions.
MARGIN_PP = {"afd": 45, "vaft": 40, "trades": 12, "mart": 28, "twins-at": 32, "twins-trades": 12, "rift": 28,
             "arrest": 45, "afkd": 40, "free-at": 45, "fgsm-ga": 30, "atas": 30}
MIN_CLEAN = {"trades": 55.0, "mart": 65.0}
DEFAULT_MARGIN_PP = 10  # a method registered after this test was written


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    db = tmp_path_factory.mktemp("all") / "results.db"
    code = main(["run", "--methods", ",".join(METHODS.names()), "--seeds", "0", "--epochs", "5",
                 "--attacks", "clean,pgd", "--n-eval", "200", "--db", str(db), "--quiet"])
    assert code == 0
    return db


@pytest.mark.parametrize("method", METHODS.names())
def test_method_raises_pgd_accuracy_above_natural(table, method, capsys):
    capsys.readouterr()
    assert main(["leaderboard", "--db", str(table), "--format", "csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out)).set_index("method")
    assert len(frame) == len(METHODS.names()) + 1
    margin = MARGIN_PP.get(method, DEFAULT_MARGIN_PP)
    assert frame.loc[method, "pgd"] >= frame.loc["natural", "pgd"] + margin, frame[["clean", "pgd"]]
    assert frame.loc[method, "clean"] >= MIN_CLEAN.get(method, 75.0)
