"""benchmarks/grid_estimate.py: the paper grid's and the Table-1 pair's cost from measured rates, by hand."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from grid_estimate import Rates, fine_tuning_seconds, grid_seconds, main  # noqa: E402

RATES = Rates(natural=1000.0, fine_tuning={"afd": 500.0, "vaft": 1000.0},
              eval_seconds_per_point={"pgd": 0.01, "aa": 0.1})


def test_fine_tuning_prices_epochs_validation_and_probe():
    # 20 × (49,500 / 500 + 500 · 0.01 · 10/20 + 512 · 0.01) = 20 × (99 + 2.5 + 5.12)
    assert fine_tuning_seconds(RATES, "afd") == pytest.approx(2132.4)
    assert fine_tuning_seconds(RATES, "vaft") == pytest.approx(20 * (49.5 + 2.5 + 5.12))


def test_grid_is_natural_once_every_cell_and_every_model_evaluated():
    # natural 100 · 50,000 / 1,000 = 5,000; 3 seeds × (2,132.4 + 1,142.4); 7 models × 10,000 × 0.11 s
    assert grid_seconds(RATES, ["afd", "vaft"], seeds=3) == pytest.approx(5000 + 3 * 3274.8 + 7 * 1100)
    # the pair: natural 30 epochs, one seed, 3 models on 1,000 points
    assert grid_seconds(RATES, ["afd", "vaft"], 1, natural_epochs=30, points=1000) == pytest.approx(
        1500 + 3274.8 + 3 * 110)


def test_a_method_without_a_rate_is_one_line(tmp_path, capsys):
    rates = tmp_path / "rates.json"
    rates.write_text('{"afd": 500}')
    assert main(["--natural-rate", "1000", "--rates", str(rates), "--db", str(tmp_path / "none.db")]) == 2
    assert capsys.readouterr().err.strip() == f"grid_estimate.py: error: no fine-tuning rate for vaft in {rates}"
