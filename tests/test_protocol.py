"""One protocol per row: a leaderboard never averages runs that were not measured alike, `bench check`
holds the protocol too, and every run's split is stored and rebuilds independently."""
import json

import pytest
import torch

from robustbench_aft.cli import main
from robustbench_aft.protocol import (
    decode_indices,
    describe_difference,
    differences,
    encode_indices,
    protocol_id,
    protocol_of,
    setting_label,
)


def _protocol(**changes):
    config = {"train": {"epochs": 2, "batch_size": 64, "lr": 0.025, "momentum": 0.9, "weight_decay": 5e-4,
                        "ema": None, "train_subset": None, "val_size": None, "select": "last"},
              "method_params_used": {"attack_steps": 10}, "pretrained_source": "/c/natural/digits-a.pt",
              "dataset_fingerprint": "f00"}
    config["train"].update(changes.pop("train", {}))
    budgets = changes.pop("budgets", {"clean": {"attack": "Clean"}, "pgd": {"attack": "PGD", "steps": 20, "eps": 0.15}})
    return protocol_of("vaft", "digits", "smallcnn", 0.15, "Linf", changes.pop("n", 100), config,
                       changes.pop("indices", list(range(100))), budgets)


def test_the_record_ignores_where_and_names_what_differs():
    base = _protocol()
    assert protocol_id(base) == protocol_id(_protocol())
    assert base["worst_over"] == ["pgd"] and base["recipe"]["pretrained"] == "digits-a.pt"
    other = _protocol(train={"epochs": 1}, n=60, indices=list(range(60)))
    assert differences(base, other) == ["points.n", "recipe.epochs"]  # other points: implied by n
    assert setting_label(other, [base]) == "epochs=1, n=60"
    assert describe_difference(other, base) == "epochs 1 vs 2, n 60 vs 100"
    same_n = _protocol(indices=list(range(1, 101)))
    assert setting_label(same_n, [base]) == "points=" + same_n["points"]["indices"][:6]
    more_attacks = _protocol(budgets={"clean": {}, "pgd": {"steps": 20}, "aa": {"version": "standard"}})
    assert setting_label(more_attacks, [base]) == "attacks=aa,pgd"
    assert describe_difference(more_attacks, base) == "attacks aa,pgd vs pgd"
    # A stored record is used as it is (runs written since protocols exist).
    assert protocol_of("vaft", "digits", "smallcnn", 0.15, "Linf", 100, {"protocol": base}, None, {}) == base


def test_a_run_stored_before_protocols_existed_derives_one_and_says_what_is_unknown():
    old = protocol_of("vaft", "digits", "smallcnn", 0.15, "Linf", 50, {"train": {"epochs": 1}}, None, {})
    assert old["points"]["indices"] == "unknown" and old["dataset_fingerprint"] == "unknown"
    assert old["attacks"] == "unknown" and old["recipe"]["params"] == "unknown"


@pytest.mark.parametrize("indices,size", [([], 10), ([0, 9], 10), ([3, 4, 5, 17], 18), (list(range(0, 50000, 7)),
                                                                                          50000)])
def test_split_encoding_round_trips(indices, size):
    text = encode_indices(indices, size)
    assert decode_indices(text)[:len(indices)] == indices and len(decode_indices(text)) == len(indices)
    if size == 50000:
        assert len(text) < 2000  # compact: the list would take 40 kB as JSON


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_a_store_of_mixed_runs_shows_one_protocol_per_row(capsys, tmp_path, digits_natural):
    """The sequence of the issue: two `bench run`s into one store, measured differently."""
    db = str(tmp_path / "results.db")
    code, _, err = _run(capsys, "run", "--methods", "vaft", "--seeds", "0", "--epochs", "1", "--n-eval", "60",
                        "--attacks", "clean,pgd,cw,aa", "--db", db, "--out", str(tmp_path / "first"), "--quiet")
    assert code == 0, err
    code, before_csv, _ = _run(capsys, "leaderboard", "--db", db, "--format", "csv")
    (tmp_path / "baseline.csv").write_text(before_csv)
    code, _, err = _run(capsys, "run", "--methods", "vaft", "--seeds", "1", "--epochs", "2", "--n-eval", "100",
                        "--attacks", "clean,pgd,aa-fast", "--db", db, "--out", str(tmp_path / "second"), "--quiet")
    assert code == 0, err

    code, board, _ = _run(capsys, "leaderboard", "--db", db)
    assert code == 0
    vaft_rows = [line for line in board.splitlines() if line.startswith("|") and " vaft " in line]
    assert len(vaft_rows) == 1 and "|       1 |" in vaft_rows[0]  # seeds: only the latest protocol's
    assert "left out, measured under an earlier protocol" in board and "vaft seed 0 (" in board
    assert "epochs 1 vs 2" in board and "n 60 vs 100" in board

    code, every, _ = _run(capsys, "leaderboard", "--db", db, "--all-protocols")
    rows = [line for line in every.splitlines() if line.startswith("|") and " vaft " in line]
    assert len(rows) == 2 and any("epochs=1" in row and "n=60" in row for row in rows)
    assert any("epochs=2" in row and "n=100" in row for row in rows)
    assert "left out" not in every

    code, _, err = _run(capsys, "check", "--baseline", str(tmp_path / "baseline.csv"), "--db", db)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "on digits/smallcnn Linf eps=0.15 was measured under another protocol than the baseline's" in err
    assert "n 100 vs 60" in err  # the first row checked names its difference (current vs baseline)


def test_every_run_stores_its_split_and_it_rebuilds_independently(capsys, tmp_path, digits_natural):
    db = str(tmp_path / "results.db")
    code, _, err = _run(capsys, "run", "--methods", "vaft", "--seeds", "3", "--epochs", "1", "--train-subset", "300",
                        "--val-size", "50", "--n-eval", "40", "--attacks", "clean", "--feature-gap-probe", "0",
                        "--db", db, "--out", str(tmp_path / "out"), "--quiet")
    assert code == 0, err
    from robustbench_aft.results import ResultsStore

    run_id = next(row["run_id"] for row in ResultsStore(db).runs() if row["method"] == "vaft")
    code, out, _ = _run(capsys, "dump", "--db", db, "--split", run_id[:8])
    assert code == 0
    split = json.loads(out)
    # Rebuilt from the documented rule (validation.split_training_set): one permutation of the
    # training set seeded by the run's seed; its first 300 fine-tune, the next 50 validate.
    order = torch.randperm(split["train_size"], generator=torch.Generator().manual_seed(3)).tolist()
    assert split["fine_tune"] == sorted(order[:300]) and split["validation"] == sorted(order[300:350])
    test_order = split["test"]
    assert len(test_order) == 40 and len(set(test_order)) == 40
    assert len(split["dataset_fingerprint"]) == 12
    code, _, err = _run(capsys, "dump", "--db", db, "--split", "nosuchrun")
    assert code == 2 and "no run in" in err


def test_third_party_progress_lines_go_to_the_run_log_not_the_terminal(capsys, tmp_path, digits_natural):
    """pyautoattack logs its progress ("robust accuracy: …", "setting parameters for standard version")
    at INFO and DEBUG: it belongs in run.log."""
    out = tmp_path / "out"
    code, _, err = _run(capsys, "run", "--methods", "vaft", "--epochs", "1", "--n-eval", "10", "--attacks",
                        "clean,aa-fast", "--feature-gap-probe", "0", "--db", str(tmp_path / "r.db"), "--out", str(out))
    assert code == 0, err
    log = (out / "run.log").read_text()
    third_party = [line.split(": ", 1)[1] for line in log.splitlines()
                   if "robustbench_aft.thirdparty.auto-attack" in line]
    assert third_party and not any(message in err for message in third_party)
    import logging

    assert logging.getLogger("auto-attack").propagate is False  # so the terminal's handlers never see them
    assert "robustbench_aft.pipeline INFO: run " in log  # our own lines are there too
    assert (out / "run.json").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    import os

    current = os.umask(0)
    os.umask(current)
    return current
