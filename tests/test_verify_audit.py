"""`bench verify` (verify.py) and `bench audit` (audit.py, methods.md §18) on a small stored natural model:
verify accepts what `bench export` wrote and rejects a tensor outside the ball, a wrong shape, NaNs and a file
that is not a tensor; the binarization test passes PGD and fails PGD without steps."""
import dataclasses

import pytest
import torch

from robustbench_aft.attacks import PGD
from robustbench_aft.audit import audit_attack, audit_stored
from robustbench_aft.cli import main
from robustbench_aft.config import EvalConfig
from robustbench_aft.data import collect
from robustbench_aft.evaluator import evaluate
from robustbench_aft.results import ResultsStore, RunRecord, outcome_bits

CPU = torch.device("cpu")
EPS = 0.15


@pytest.fixture(scope="module")
def stored(tmp_path_factory, digits, digits_model):
    """A store holding the natural digits model evaluated with clean and PGD on 24 points, and its export."""
    folder = tmp_path_factory.mktemp("verify")
    config = EvalConfig(attacks=["clean", "pgd"], eps=EPS, n_eval=24, sanity=False)
    result = evaluate(digits_model, digits, config, CPU, progress=False)
    checkpoint = folder / "natural.pt"
    torch.save(digits_model.state_dict(), checkpoint)
    record = RunRecord(group_id="g", method="natural", method_version=0, dataset="digits", arch="smallcnn", seed=0,
                       eps=EPS, norm="Linf", n_eval=result.n, metrics=result.accuracy,
                       config={"checkpoint": str(checkpoint), "eval": {**dataclasses.asdict(config), "eps": EPS}},
                       flags=[], provenance={}, wall_seconds=1.0, indices=list(result.indices),
                       per_sample={k: outcome_bits(v) for k, v in result.correct.items()}, budgets=result.budgets)
    db = folder / "r.db"
    ResultsStore(str(db)).add(record)
    exported = folder / "adv.pt"
    assert main(["export", "--db", str(db), "--method", "natural", "--adversarial", str(exported), "--quiet",
                 "--device", "cpu"]) == 0
    return db, exported, result


def _verify(db, path, *extra):
    return main(["verify", "--db", str(db), "--adversarial", str(path), "--device", "cpu", "--quiet", *extra])


def test_verify_accepts_what_export_wrote(stored, capsys):
    db, exported, _ = stored
    capsys.readouterr()
    assert _verify(db, exported) == 0
    out = capsys.readouterr().out
    assert "verdict: PASS" in out and "FAIL" not in out and "24 of 24 points agree" in out


@pytest.mark.parametrize("tamper,check", [
    (lambda t, x: x + torch.where(torch.arange(x.numel()).view_as(x) % 2 == 0, 0.3, -0.3).clamp(-x, 1 - x),
     "Linf ball"),
    (lambda t, x: t[:-1], "shape"),
    (lambda t, x: t.masked_fill(torch.zeros_like(t, dtype=torch.bool).index_fill_(0, torch.tensor([3]), True),
                                float("nan")), "finite"),
])
def test_verify_rejects_a_bad_tensor_in_one_line(stored, digits, tmp_path, capsys, tamper, check):
    db, exported, result = stored
    x, _ = collect(digits.test, result.indices)
    bad = tmp_path / "bad.pt"
    torch.save(tamper(torch.load(exported), x), bad)
    capsys.readouterr()
    assert _verify(db, bad) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"| {check}") and "FAIL" in line for line in lines)
    verdict = [line for line in lines if line.startswith("verdict: FAIL")]
    assert verdict and check in lines[-1]
    failed = [line.split("|")[1].strip() for line in lines if line.startswith("| ") and "| FAIL" in line]
    if check in ("shape", "finite"):  # the checks it prevents are listed as not checked, not as failures
        assert failed == [check] and any("| not checked" in line for line in lines)


@pytest.mark.parametrize("payload", [{"images": torch.zeros(2)}, b"not a tensor at all"])
def test_verify_refuses_a_file_that_is_not_a_tensor(stored, tmp_path, capsys, payload):
    db, _, _ = stored
    path = tmp_path / "x.pt"
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    else:
        torch.save(payload, path)
    capsys.readouterr()
    assert _verify(db, path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench: error: --adversarial") and "tensor" in err[0]


def test_audit_passes_pgd_on_the_natural_model(stored, capsys):
    db, _, _ = stored
    capsys.readouterr()
    assert main(["audit", "--db", str(db), "--attack", "pgd", "--points", "8", "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| pass" in out and "sanity flags: none" in out


def test_audit_fails_a_crippled_attack_and_flags_it(stored, digits, digits_model):
    db, _, result = stored
    crippled = audit_stored(str(db), "natural", "pgd", CPU, points=8, options={"steps": 0})
    assert crippled.feasible >= 6 and crippled.found == 0 and not crippled.passed
    assert "too weak" in crippled.flag()
    # Stored with the run, the flag counts it as flagged; a passing audit of the same attack removes it.
    from robustbench_aft.audit import store_verdict
    from robustbench_aft.results import ResultsStore

    assert store_verdict(str(db), crippled) == f"flag stored with run {crippled.run_id}"
    assert store_verdict(str(db), crippled) == f"flag stored with run {crippled.run_id}"  # replaced, not piled up
    flags = ResultsStore(str(db)).record(crippled.run_id).flags
    assert [f for f in flags if f.startswith("audit of pgd: ")] == [crippled.flag()]
    sound = audit_stored(str(db), "natural", "pgd", CPU, points=8)
    assert sound.passed and store_verdict(str(db), sound).startswith("earlier pgd audit flag removed")
    assert not [f for f in ResultsStore(str(db)).record(crippled.run_id).flags if f.startswith("audit of")]
    elsewhere = audit_stored(str(db), "natural", "pgd", CPU, points=2, eps=0.05, options={"steps": 0})
    assert not elsewhere.at_run_eps and store_verdict(str(db), elsewhere) is None
    x, _ = collect(digits.test, result.indices[:4])
    assert all(t.found for t in audit_attack(digits_model, x, PGD(EPS), list(range(4))) if t.feasible)


def test_audit_refuses_an_attack_that_is_not_white_box(stored, capsys):
    db, _, _ = stored
    assert main(["audit", "--db", str(db), "--attack", "clean", "--device", "cpu", "--quiet"]) == 2
    assert "not a white-box" in capsys.readouterr().err
