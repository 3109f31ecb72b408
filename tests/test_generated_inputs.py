"""Generated bad input (Hypothesis): command lines and config files drawn from the flag grammar of
`bench run`, `bench eval` and `bench leaderboard`, with numbers at and past every range's edges, NaN,
empty and duplicated lists, unknown names, wrong types, missing and unreadable paths.

For every one: exit 0, or exit 2 with one stderr line and no traceback, and the rows of a store the
test snapshots unchanged by every refused call. The CLI's entry function runs in-process; accepted
`bench run` lines stop after validation (``--print-config``) and accepted `bench eval` lines only
classify clean images, so the whole file takes minutes. A failure Hypothesis finds becomes an
``@example`` below.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import sqlite3
from pathlib import Path
from typing import List, Tuple

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from robustbench_aft.cli import main  # noqa: E402
from robustbench_aft.config import OPTIONS  # noqa: E402

pytestmark = pytest.mark.slow

NUMBERS = ["0", "1", "2", "-1", "-0", "0.5", "1e-9", "1e309", "-1e309", "nan", "NaN", "inf", "-inf", "8/255",
           "1/0", "3/", "/2", "1,2", "2147483648", "99999999999", "1.5", "ten", "", " ", "0x10", "1_000"]
NAMES = ["ours", "afd", "trades", "vaft", "all", "tradez", "AFD", "ours,ours", "ours,afd", "ours,,trades", ",",
         "", "pgd", "clean", "aa-fast", "pgd,pgd", "pdg", "digits", "digitz", "folder", "folder:/nonexistent",
         "smallcnn", "resnet81", "timm:resnt18", "py:no.such:thing", "quick", "papr", "Linf", "L3", "auto", "cpu",
         "cuda:7", "tpu", "on", "off", "maybe", "last", "best-val", "afd.alpha=0.1", "afd.alpha=nan",
         "afd.delta=1", "mart.beta=1", "afd.alpha", "none", "null"]
COUNTS = {"accepted": 0, "refused": 0}


def _paths(root: Path) -> List[str]:
    return [str(root / "missing" / "file"), str(root / "adir"), str(root / "text.txt"), str(root / "store.db"),
            str(root / "unreadable"), str(root / "adir" / "new.db"), ""]


def _store_digest(db: Path) -> str:
    with sqlite3.connect(str(db)) as connection:
        rows = connection.execute("SELECT run_id, method, seed, status FROM runs ORDER BY run_id").fetchall()
        rows += connection.execute("SELECT run_id, metric, value FROM metrics ORDER BY run_id, metric").fetchall()
    return hashlib.sha256(repr(rows).encode()).hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory, digits_natural):
    """A folder with a store of one finished run, a directory, a text file and an unreadable folder."""
    root = tmp_path_factory.mktemp("generated")
    db = root / "store.db"
    assert main(["run", "--methods", "vaft", "--epochs", "1", "--n-eval", "30", "--attacks", "clean,pgd",
                 "--feature-gap-probe", "0", "--db", str(db), "--out", str(root / "out"), "--quiet"]) == 0
    (root / "adir").mkdir()
    (root / "text.txt").write_text("not a checkpoint\n")
    unreadable = root / "unreadable"
    unreadable.mkdir()
    unreadable.chmod(0)
    yield root, db, _store_digest(db)
    unreadable.chmod(0o755)


def _call(argv: List[str]) -> Tuple[int, str]:
    stderr = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
        code = main(argv)
    return code, stderr.getvalue()


def _check(world, argv: List[str]) -> None:
    _, db, digest = world
    code, err = _call(argv)
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("bench: error: "), (argv, err)
        COUNTS["refused"] += 1
    else:
        COUNTS["accepted"] += 1
    assert "Traceback" not in err, (argv, err)
    assert _store_digest(db) == digest, argv


def _option_values(root: Path):
    return st.sampled_from(NUMBERS + NAMES + _paths(root))


def _run_line(root: Path):
    flags = st.sampled_from(sorted(OPTIONS))
    pair = st.tuples(flags, _option_values(root))
    return st.lists(pair, min_size=0, max_size=6)


def _argv_of(pairs) -> List[str]:
    argv: List[str] = []
    for name, value in pairs:
        flag = "--" + name.replace("_", "-")
        if OPTIONS.get(name) is not None and OPTIONS[name].switch:
            argv.append(flag)
        else:
            argv += [flag, value]
    return argv


@settings(max_examples=260, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_generated_bench_run_lines(world, data):
    root, db, _ = world
    pairs = data.draw(_run_line(root))
    with_methods = data.draw(st.booleans())
    argv = ["run", *(["--methods", "ours"] if with_methods else []), *_argv_of(pairs), "--print-config"]
    _check(world, argv)


YAML_VALUES = st.one_of(st.integers(-3, 2**40), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                        st.none(), st.sampled_from(NUMBERS + NAMES), st.lists(st.sampled_from(NAMES), max_size=3),
                        st.dictionaries(st.sampled_from(["epochs", "alpha", "eps", "norm", "x"]),
                                        st.sampled_from(NUMBERS + NAMES), max_size=2))
YAML_KEYS = st.sampled_from(sorted(OPTIONS) + ["batch-size", "train", "eval", "threat", "set", "epochz", "launcher",
                                               "format", "resume", "print_config", "config"])


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(content=st.dictionaries(YAML_KEYS, YAML_VALUES, max_size=5), on_command_line=st.booleans())
def test_generated_config_files(world, content, on_command_line):
    import yaml

    root, _, _ = world
    path = root / "generated.yaml"
    path.write_text(yaml.safe_dump(content) if content else "")
    _check(world, ["run", "--config", str(path), *(["--methods", "vaft"] if on_command_line else []),
                   "--print-config"])


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(checkpoint=st.sampled_from(["auto", "", "robustbench:", "hf-hub:none/none"]) | st.just("PATH"),
       path=st.integers(0, 6), attacks=st.sampled_from(["clean", "", "clean,clean", "pdg", ",", "clean,"]),
       eps=st.sampled_from([None, *NUMBERS]), n_eval=st.sampled_from([None, "1", "20", "0", "-5", "9999", "x"]),
       extra=st.lists(st.sampled_from([["--norm", "L3"], ["--norm", "L2"], ["--format", "xml"], ["--format", "csv"],
                                       ["--dataset", "digitz"], ["--arch", "resnet81"], ["--image-size", "0"],
                                       ["--mean", "half"], ["--batch-size", "0"], ["--seed", "-1"]]), max_size=2))
def test_generated_bench_eval_lines(world, checkpoint, path, attacks, eps, n_eval, extra):
    root, _, _ = world
    source = _paths(root)[path] if checkpoint == "PATH" else checkpoint
    argv = ["eval", "--checkpoint", source, "--attacks", attacks]
    argv += [] if eps is None else ["--eps", eps]
    argv += [] if n_eval is None else ["--n-eval", n_eval]
    for option in extra:
        argv += option
    _check(world, argv)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(db=st.integers(0, 6), fmt=st.sampled_from(["md", "csv", "json", "xml", ""]),
       rank_by=st.sampled_from([None, "worst", "pgd", "aa", "avg", "nope", ""]),
       select=st.sampled_from([None, "last", "best-val", "first"]),
       columns=st.sampled_from([None, "cost", "fine_tune_s,eval_s", "nope", ""]),
       switches=st.lists(st.sampled_from(["--all-protocols", "--mix-budgets", "--with-published"]), max_size=3))
def test_generated_bench_leaderboard_lines(world, db, fmt, rank_by, select, columns, switches):
    root, _, _ = world
    argv = ["leaderboard", "--db", _paths(root)[db], "--format", fmt]
    for flag, value in (("--rank-by", rank_by), ("--select", select), ("--columns", columns)):
        argv += [] if value is None else [flag, value]
    _check(world, argv + list(dict.fromkeys(switches)))


def test_generated_inputs_summary():
    """At least 500 generated inputs ran (this test runs after the four above, in file order)."""
    total = COUNTS["accepted"] + COUNTS["refused"]
    print(f"generated inputs: {total} ({COUNTS['accepted']} accepted, exit 0; {COUNTS['refused']} refused, exit 2)")
    assert total >= 500
