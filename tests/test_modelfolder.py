"""Model folders: `bench export --model` → `--checkpoint DIR` / `hf-hub:ORG/NAME` give the same logits and the
same `bench eval` numbers; the card carries the store's numbers; every bad folder is one line, exit 2."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("safetensors")
pytest.importorskip("huggingface_hub")

from robustbench_aft.cli import main  # noqa: E402
from robustbench_aft.modelfolder import exported_folders  # noqa: E402
from robustbench_aft.models import build_model  # noqa: E402
from robustbench_aft.pretrained import resolve, save_checkpoint  # noqa: E402
from robustbench_aft.results import ResultsStore, RunRecord  # noqa: E402

CPU = torch.device("cpu")
PGD = {"attack": "PGD", "steps": 20, "restarts": 1, "step": "0.25·eps", "loss": "cross_entropy_loss",
       "start": "random", "precision": "fp32", "eps": 0.15, "eps_given": "0.15", "norm": "Linf"}
# A timm network that runs on 8×8 single-channel digits (its stem and stages shrink 8×8 to 1×1).
TIMM_ARCH = "timm:resnet18"
EVAL = ["--attacks", "clean,pgd", "--format", "json", "--quiet"]
# Points per `bench eval`: resnet18's PGD is the slow part of the file on a CPU.
POINTS = {"smallcnn": "64", TIMM_ARCH: "24"}


def _stored_run(folder: Path, model, digits, arch: str, method: str = "afd") -> Path:
    """A store with one finished run of ``model`` whose ``final.pt`` lies in a run folder with a config.yaml."""
    run_folder = folder / "out"
    (run_folder / f"{method}-seed0").mkdir(parents=True)
    (run_folder / "config.yaml").write_text(f"# run g: load with bench run --config\nmethods: [{method}]\n"
                                            f"arch: {arch}\n")
    checkpoint = save_checkpoint(model, run_folder / f"{method}-seed0" / "final.pt", arch, digits)
    db = folder / "results.db"
    ResultsStore(str(db)).add(RunRecord(
        group_id="g", method=method, method_version=1, dataset="digits", arch=arch, seed=0, eps=0.15, norm="Linf",
        n_eval=64, metrics={"clean": 96.875, "pgd": 50.0, "worst": 50.0},
        config={"checkpoint": str(checkpoint.resolve()), "out": str(run_folder), "pretrained": "auto",
                "pretrained_seed": 0, "pretrained_source": "cache/natural.pt",
                "method_params_used": {"alpha": 0.05, "beta": 0.25},
                "train": {"epochs": 2, "batch_size": 64, "lr": 0.025},
                "eval": {"seed": 0, "attacks": ["clean", "pgd"]}},
        flags=[], provenance={"package_version": "0.1.0", "git_commit": "abc123", "torch_version": torch.__version__,
                              "device": "cpu"},
        wall_seconds=1.0, budgets={"clean": {"attack": "Clean", "precision": "fp32"}, "pgd": PGD}))
    return db


def _eval_json(capsys, checkpoint: str, *extra: str, points: str = "64") -> dict:
    assert main(["eval", "--checkpoint", checkpoint, *extra, "--n-eval", points, *EVAL]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("arch", ["smallcnn", TIMM_ARCH])
def test_export_load_round_trip_gives_identical_logits_and_numbers(arch, tmp_path, capsys, digits, digits_model):
    if arch == "smallcnn":
        model = digits_model
    else:
        torch.manual_seed(0)
        model = build_model(arch, digits.num_classes, 1, digits.mean, digits.std, digits.input_shape).eval()
    db = _stored_run(tmp_path, model, digits, arch)
    folder = tmp_path / "afd"
    assert main(["export", "--db", str(db), "--method", "afd", "--model", str(folder), "--quiet"]) == 0
    assert f"model folder written to {folder}" in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "config.yaml", "model.safetensors"]
    assert not (folder / "model.safetensors").read_bytes().startswith(b"PK")  # safetensors, not a torch zip
    spec = json.loads((folder / "config.json").read_text())
    assert (spec["architecture"], spec["num_classes"], spec["input_size"]) == (arch, 10, [1, 8, 8])
    assert spec["mean"] == pytest.approx(model.normalize.mean.flatten().tolist())
    assert (folder / "config.yaml").read_text().startswith("# run g")
    run_id, = [r["run_id"] for r in ResultsStore(str(db)).runs()]
    assert exported_folders(str(db)) == {run_id: str(folder.resolve())}

    loaded, info = resolve(str(folder), digits, None, seed=0, device=CPU)
    images = torch.stack([digits.test[i][0] for i in range(32)])
    with torch.no_grad():
        assert torch.equal(loaded.eval()(images), model.eval()(images))
    assert info["arch"] == arch and info["metadata"]["run_id"]

    original = _eval_json(capsys, str(tmp_path / "out" / "afd-seed0" / "final.pt"), "--arch", arch, points=POINTS[arch])
    exported = _eval_json(capsys, str(folder), points=POINTS[arch])  # the arch comes from config.json
    assert exported["arch"] == arch
    assert [(r["attack"], r["correct"]) for r in exported["rows"]] == \
        [(r["attack"], r["correct"]) for r in original["rows"]]


def test_bench_run_starts_from_a_model_folder(tmp_path, capsys, digits, digits_model):
    db = _stored_run(tmp_path, digits_model, digits, "smallcnn")
    assert main(["export", "--db", str(db), "--method", "afd", "--model", str(tmp_path / "afd"), "--quiet"]) == 0
    capsys.readouterr()
    clean = {r["attack"]: r["correct"] for r in _eval_json(capsys, str(tmp_path / "afd"), points="32")["rows"]}
    assert main(["run", "--methods", "ours", "--pretrained", str(tmp_path / "afd"), "--epochs", "1", "--train-subset",
                 "64", "--attacks", "clean,pgd", "--n-eval", "32", "--feature-gap-probe", "0", "--db",
                 str(tmp_path / "new.db"), "--out", str(tmp_path / "run"), "--format", "csv", "--quiet"]) == 0
    natural = [r for r in ResultsStore(str(tmp_path / "new.db")).runs() if r["method"] == "natural"][0]
    metrics = ResultsStore(str(tmp_path / "new.db")).record(natural["run_id"]).metrics
    assert round(metrics["clean"] * 32 / 100) == clean["clean"] and round(metrics["pgd"] * 32 / 100) == clean["pgd"]
    assert json.loads(natural["config_json"])["pretrained_source"] == str(tmp_path / "afd")


def test_model_card_has_hub_metadata_and_the_stored_numbers(tmp_path, capsys, digits, digits_model):
    from huggingface_hub import ModelCard

    db = _stored_run(tmp_path, digits_model, digits, "smallcnn")
    assert main(["export", "--db", str(db), "--method", "afd", "--model", str(tmp_path / "card"), "--quiet"]) == 0
    card = ModelCard.load(tmp_path / "card" / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "robustbench-aft" and data["datasets"] == ["digits"] and "afd" in data["tags"]
    results = {r.metric_type: r for r in card.data.eval_results}
    assert {k: r.metric_value for k, r in results.items()} == {"clean_accuracy": 96.88, "pgd_accuracy": 50.0,
                                                               "worst_accuracy": 50.0}
    assert results["pgd_accuracy"].metric_config.startswith("PGD (loss cross_entropy_loss, restarts 1")
    text = card.text
    # 62 of 64 points: the Wilson interval [89.3, 99.1]; 32 of 64: [38.1, 61.9].
    assert "| clean | 96.88 [89.3, 99.1] | Clean (fp32) |" in text and "| pgd | 50.00 [38.1, 61.9] | PGD (" in text
    for fact in ("alpha = 0.05, beta = 0.25", "2 epochs, batch 64, SGD lr 0.025", "commit abc123",
                 "Fine-tuning seed 0", "Threat model: Linf, eps = 0.15", "96.88 [89.3, 99.1]"):
        assert fact in text, fact


def test_bench_report_links_each_exported_row_to_its_model_folder(tmp_path, capsys, digits, digits_model):
    db = _stored_run(tmp_path, digits_model, digits, "smallcnn")
    store = ResultsStore(str(db))
    natural = RunRecord(group_id="g", method="natural", method_version=0, dataset="digits", arch="smallcnn", seed=0,
                        eps=0.15, norm="Linf", n_eval=64, metrics={"clean": 99.0, "pgd": 1.0, "worst": 1.0},
                        config={}, flags=[], provenance={}, wall_seconds=1.0)
    store.add(natural)
    assert main(["export", "--db", str(db), "--method", "afd", "--model", str(tmp_path / "shared" / "afd"),
                 "--quiet"]) == 0
    report = tmp_path / "report.html"
    assert main(["report", "--db", str(db), "--output", str(report)]) == 0
    page = report.read_text()
    link = "<a href='shared/afd/README.md'>afd</a>"
    assert page.count(link) == 2  # the leaderboard row and the run's details
    rows = [line for line in page.split("<tr>") if "<td>natural</td>" in line or "<td>afd</td>" in line]
    assert len(rows) == 2 and link in rows[1] and "<a href" not in rows[0]


def _hub_cache(root: Path, repo: str, source: Path) -> Path:
    """The Hugging Face cache layout (``models--ORG--NAME/refs/main`` → ``snapshots/<commit>/``) holding
    ``source``."""
    commit = "0" * 40
    base = root / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snapshot = base / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in source.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    return root


def test_hf_hub_source_loads_from_the_cache_offline(tmp_path, capsys, monkeypatch, digits, digits_model):
    db = _stored_run(tmp_path, digits_model, digits, "smallcnn")
    assert main(["export", "--db", str(db), "--method", "afd", "--model", str(tmp_path / "afd"), "--quiet"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("HF_HUB_CACHE", str(_hub_cache(tmp_path / "hub", "someone/afd-digits", tmp_path / "afd")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, info = resolve("hf-hub:someone/afd-digits", digits, "smallcnn", seed=0, device=CPU)
    images = torch.stack([digits.test[i][0] for i in range(16)])
    with torch.no_grad():
        assert torch.equal(model.eval()(images), digits_model(images))
    assert info["source"] == "hf-hub:someone/afd-digits"
    from_hub = _eval_json(capsys, "hf-hub:someone/afd-digits")
    from_folder = _eval_json(capsys, str(tmp_path / "afd"))
    assert [r["correct"] for r in from_hub["rows"]] == [r["correct"] for r in from_folder["rows"]]


# --- bad input: one line, exit 2, nothing written ----------------------------------------------------------


@pytest.fixture
def bad_folders(tmp_path, digits, digits_model, capsys):
    db = _stored_run(tmp_path, digits_model, digits, "smallcnn")
    good = tmp_path / "good"
    assert main(["export", "--db", str(db), "--method", "afd", "--model", str(good), "--quiet"]) == 0
    capsys.readouterr()
    for name, drop in (("no_config", "config.json"), ("no_weights", "model.safetensors")):
        (tmp_path / name).mkdir()
        for path in good.iterdir():
            if path.name != drop:
                (tmp_path / name / path.name).write_bytes(path.read_bytes())
    unknown = tmp_path / "unknown_arch"
    unknown.mkdir()
    (unknown / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
    spec = json.loads((good / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**spec, "architecture": "smallcnnn"}))
    from safetensors.torch import load_file, save_file

    state = load_file(good / "model.safetensors")
    state["head.weight"] = state["head.weight"][:, :3].contiguous()
    (tmp_path / "wrong_shapes").mkdir()
    save_file(state, tmp_path / "wrong_shapes" / "model.safetensors")
    (tmp_path / "wrong_shapes" / "config.json").write_text((good / "config.json").read_text())
    (tmp_path / "not_empty").mkdir()
    (tmp_path / "not_empty" / "notes.txt").write_text("mine\n")
    return tmp_path


BAD_FOLDERS = {
    "folder without config.json": (["eval", "--checkpoint", "{tmp}/no_config"], "lacks config.json"),
    "folder without weights": (["eval", "--checkpoint", "{tmp}/no_weights"], "lacks model.safetensors"),
    "config.json names an unknown arch": (["eval", "--checkpoint", "{tmp}/unknown_arch"],
                                          "unknown arch 'smallcnnn'. Did you mean 'smallcnn'"),
    "weights of other shapes": (["eval", "--checkpoint", "{tmp}/wrong_shapes"], "shape mismatch in head.weight"),
    "arch other than the folder's": (["eval", "--checkpoint", "{tmp}/good", "--arch", "resnet18"],
                                     "holds arch 'smallcnn', not 'resnet18'"),
    "hf-hub name not cached, offline": (["eval", "--checkpoint", "hf-hub:nobody/nothing"],
                                        "is not in the Hugging Face cache"),
    "malformed hf-hub name": (["eval", "--checkpoint", "hf-hub:no-slash"], "expected hf-hub:ORG/NAME"),
    "pretrained folder without weights": (["run", "--methods", "ours", "--pretrained", "{tmp}/no_weights",
                                           "--db", "{tmp}/new.db", "--out", "{tmp}/new_out"],
                                          "lacks model.safetensors"),
    "export into a folder with other files": (["export", "--db", "{tmp}/results.db", "--method", "afd", "--model",
                                               "{tmp}/not_empty"], "--model {tmp}/not_empty is not empty"),
    "export of a method not stored": (["export", "--db", "{tmp}/results.db", "--method", "trades", "--model",
                                       "{tmp}/new_folder"], "no finished run of trades"),
    "export with neither --model nor --adversarial": (["export", "--db", "{tmp}/results.db", "--method", "afd"],
                                                      "give --model DIR"),
}


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_bad_model_folder_is_one_line_exit_2_and_writes_nothing(case, bad_folders, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(bad_folders / "empty_hub_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv, expected = BAD_FOLDERS[case]
    before = _snapshot(bad_folders)
    code = main([arg.replace("{tmp}", str(bad_folders)) for arg in argv] + ["--quiet"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and captured.out == "" and len(lines) == 1, captured.err
    assert lines[0].startswith("bench: error: ") and expected.replace("{tmp}", str(bad_folders)) in lines[0], lines[0]
    assert _snapshot(bad_folders) == before
