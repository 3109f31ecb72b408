"""The bad-input matrix: every row is one line on stderr, exit 2, no traceback, nothing written.

Each case runs in a folder that already holds a results store with one run and an output folder
with one file; after the failed command every byte there must be unchanged and nothing new may
appear. Add a row here for every new way a user can get an input wrong.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from robustbench_aft.cli import main
from robustbench_aft.pretrained import save_checkpoint
from robustbench_aft.results import ResultsStore, RunRecord

OWN = "py:tests.own_model_factories"

# {name: (argv with {tmp} for the case folder, text the one-line message must contain)}
BAD_INPUTS = {
    # unknown names, with suggestions
    "unknown method": (["run", "--methods", "ours,tradez"], "Did you mean 'trades'"),
    "unknown dataset": (["run", "--methods", "ours", "--dataset", "digitz"], "Did you mean 'digits'"),
    "unknown arch": (["run", "--methods", "ours", "--arch", "resnet81"], "Did you mean 'resnet18'"),
    "unknown attack": (["run", "--methods", "ours", "--attacks", "clean,pdg"], "unknown attack 'pdg'"),
    "unknown preset": (["run", "--methods", "ours", "--preset", "fast"], "unknown preset 'fast'"),
    "unknown eval dataset": (["eval", "--checkpoint", "auto", "--dataset", "digitz"], "Did you mean 'digits'"),
    "unknown eval arch": (["eval", "--checkpoint", "auto", "--arch", "resnet81"], "Did you mean 'resnet18'"),
    "unknown command": (["train"], "invalid choice: 'train'"),
    "unknown list kind": (["list", "models"], "invalid choice: 'models'"),
    # methods and seeds
    "missing --methods": (["run"], "required: --methods"),
    "empty --methods": (["run", "--methods", ","], "--methods is empty"),
    "malformed seeds": (["run", "--methods", "ours", "--seeds", "0,x"], "--seeds expects comma-separated integers"),
    "empty seeds": (["run", "--methods", "ours", "--seeds", ","], "--seeds expects comma-separated integers"),
    "negative seed": (["run", "--methods", "ours", "--seeds", "-1"], "integers >= 0"),
    "duplicate seeds": (["run", "--methods", "ours", "--seeds", "1,1"], "duplicates"),
    # Empty lists and duplicates are refused alike in every list (aliases resolved first).
    "empty --attacks": (["run", "--methods", "ours", "--attacks", ""], "--attacks is empty"),
    "empty --seeds": (["run", "--methods", "ours", "--seeds", ""], "--seeds expects comma-separated integers"),
    "empty --methods text": (["run", "--methods", ""], "--methods is empty"),
    "duplicate method": (["run", "--methods", "ours,ours"], "--methods names afd twice"),
    "duplicate method by alias": (["run", "--methods", "ours,afd"], "('ours' and 'afd' are the same)"),
    "duplicate attack": (["run", "--methods", "ours", "--attacks", "pgd,pgd"], "--attacks names pgd twice"),
    "empty item in a list": (["run", "--methods", "ours,,trades"], "has an empty item"),
    "config file type in words": (["run", "--config", "{tmp}/wrongtype.yaml"], "train.epochs=ten: expected an integer"),
    # budgets and sizes
    "malformed eps": (["run", "--methods", "ours", "--eps", "big"], "--eps must be a number"),
    "negative eps": (["run", "--methods", "ours", "--eps", "-0.1"], "--eps must be a finite number >= 0"),
    "eps above 1": (["run", "--methods", "ours", "--eps", "8"], "larger than 1"),
    "eval eps above 1": (["eval", "--checkpoint", "auto", "--eps", "2"], "larger than 1"),
    "zero n-eval": (["run", "--methods", "ours", "--n-eval", "0"], "expected a positive integer"),
    "n-eval above the test set": (["run", "--methods", "ours", "--n-eval", "5000", "--db", "{tmp}/results.db"],
                                  "larger than the test set (360 images)"),
    "zero epochs": (["run", "--methods", "ours", "--epochs", "0"], "expected a positive integer, got '0'"),
    "negative pretrain epochs": (["pretrain", "--epochs", "-3"], "expected a positive integer"),
    "bad device": (["run", "--methods", "ours", "--device", "tpu9"], "invalid device"),
    "cuda without a GPU": (["run", "--methods", "ours", "--device", "cuda"], "CUDA is not available"),
    # data
    "missing data directory": (["run", "--methods", "ours", "--dataset", "cifar10", "--data-dir", "{tmp}/nodata"],
                               "--download"),
    "folder without path": (["run", "--methods", "ours", "--dataset", "folder"], "needs a path"),
    "image folder without images": (["run", "--methods", "ours", "--dataset", "folder:{tmp}/empty_images"],
                                    "no images in class folder"),
    "image folder with mismatched classes": (["run", "--methods", "ours", "--dataset", "folder:{tmp}/mismatched"],
                                             "(only in train: dog; only in test: emu)"),
    "image folder with a corrupt image": (["run", "--methods", "ours", "--dataset", "folder:{tmp}/corrupt_image"],
                                          "corrupt_image/train/dog/bad.jpg (not an image file Pillow can identify)"),
    "image folder with one class": (["run", "--methods", "ours", "--dataset", "folder:{tmp}/one_class"],
                                    "has 1 class folder(s) with images (cat); a classifier needs at least two"),
    # own models (py:), verified on a probe batch
    "py model returning a tuple": (["run", "--methods", "ours", "--arch", f"{OWN}:tuple_output[in_channels=1]"],
                                   "returns a tuple, not a tensor of logits; wrap it in a module"),
    "eval of a py model returning a tuple": (["eval", "--checkpoint", "auto", "--arch",
                                              f"{OWN}:tuple_output[in_channels=1]"],
                                             "returns a tuple, not a tensor of logits; wrap it in a module"),
    "py model with a LogSoftmax after fc": (["run", "--methods", "ours", "--arch",
                                             f"{OWN}:fc_then_logsoftmax[in_channels=1]"],
                                            "is not the last operation of its forward: post (LogSoftmax) runs on"),
    # checkpoints
    "missing checkpoint": (["eval", "--checkpoint", "{tmp}/nothing.pt"], "does not exist"),
    "checkpoint is a directory": (["eval", "--checkpoint", "{tmp}/out"], "is not a model folder: it lacks config.json"),
    "corrupt checkpoint": (["run", "--methods", "ours", "--pretrained", "{tmp}/corrupt.pt",
                            "--db", "{tmp}/results.db"], "truncated or not a torch checkpoint"),
    "truncated checkpoint": (["eval", "--checkpoint", "{tmp}/truncated.pt"], "the file was cut short"),
    "unknown timm model": (["run", "--methods", "ours", "--arch", "timm:resnt18", "--db", "{tmp}/results.db"],
                           "timm:resnt18 is not a timm model. Did you mean resnet18"),
    "unknown torchvision model": (["run", "--methods", "ours", "--arch", "torchvision:mobilenet_v3_smal",
                                   "--db", "{tmp}/results.db"],
                                  "Did you mean mobilenet_v3_small"),
    "py: model that does not import": (["run", "--methods", "ours", "--arch", "py:no.such.module:net",
                                        "--db", "{tmp}/results.db"], "py:no.such.module:net: cannot import it"),
    "py: factory returning no module": (["eval", "--checkpoint", "auto", "--arch",
                                         "py:tests.contract.external_factories:not_a_module"],
                                        "returned a str, not an nn.Module"),
    "--image-size 0": (["run", "--methods", "ours", "--image-size", "0"], "--image-size: expected a positive"),
    "--std with a zero": (["run", "--methods", "ours", "--std", "0.5,0,0.5"],
                          "--std 0.5,0,0.5: every value must be positive"),
    "--mean not numbers": (["run", "--methods", "ours", "--mean", "half"], "--mean half: give one number per channel"),
    "--mean for the wrong channels": (["run", "--methods", "ours", "--mean", "0.5,0.5", "--db", "{tmp}/results.db"],
                                      "2 values for 1 channel(s)"),
    "checkpoint is an HTML page": (["eval", "--checkpoint", "{tmp}/download.pt"],
                                   "is an HTML page (70 bytes), not a checkpoint: probably a failed download"),
    "empty checkpoint": (["eval", "--checkpoint", "{tmp}/empty.pt"], "is empty (0 bytes)"),
    "checkpoint is text": (["eval", "--checkpoint", "{tmp}/notes.pt"],
                           "is a text file (15 bytes, starting 'weights: none')"),
    "checkpoint fails its SHA-256": (["eval", "--checkpoint", "{tmp}/tampered.pt"], "fails its recorded SHA-256"),
    "wrong-arch checkpoint": (["run", "--methods", "ours", "--pretrained", "{tmp}/smallcnn.pt", "--arch", "resnet18",
                               "--db", "{tmp}/results.db"], "saved for arch 'smallcnn'"),
    "wrong number of classes": (["eval", "--checkpoint", "{tmp}/three_classes.pt"], "has 3 classes"),
    # output locations
    "--out inside a file": (["run", "--methods", "ours", "--db", "{tmp}/results.db", "--out", "{tmp}/afile/out"],
                            "is a file"),
    "--out is a file": (["run", "--methods", "ours", "--db", "{tmp}/results.db", "--out", "{tmp}/afile"], "is a file"),
    "--db inside a file": (["run", "--methods", "ours", "--db", "{tmp}/afile/results.db"], "is a file"),
    "--db is a directory": (["run", "--methods", "ours", "--db", "{tmp}/out"], "is a directory"),
    "--db is not a store": (["leaderboard", "--db", "{tmp}/afile"], "is not a results database"),
    "--resume without --out": (["run", "--methods", "ours", "--resume", "--db", "{tmp}/results.db"],
                               "--resume needs the --out folder"),
    "eval --output is a directory": (["eval", "--checkpoint", "auto", "--output", "{tmp}/out"], "is a directory"),
    # method parameters
    "--set unknown key": (["run", "--methods", "ours", "--set", "afd.delta=1"], "afd has no parameter 'delta'"),
    "--set wrong type": (["run", "--methods", "ours", "--set", "afd.alpha=abc"], "afd.alpha"),
    "--set without a value": (["run", "--methods", "ours", "--set", "afd.alpha"], "METHOD.PARAM=VALUE"),
    "--set for an unknown method": (["run", "--methods", "ours", "--set", "nope.beta=1"], "unknown method 'nope'"),
    "--set for a method not run": (["run", "--methods", "ours", "--set", "mart.beta=1"], "mart is not among --methods"),
    "--set negative steps": (["run", "--methods", "ours", "--set", "afd.attack_steps=-3"],
                             "afd.attack_steps=-3: must be an integer >= 1"),
    "--set nan weight": (["run", "--methods", "ours", "--set", "afd.alpha=nan"],
                         "afd.alpha=nan: must be a finite number >= 0"),
    "--set probability above 1": (["run", "--methods", "rift", "--set", "rift.rift_fraction=1.5"],
                                  "must be a finite number >= 0 and <= 1"),
    # config files
    "--config missing": (["run", "--config", "{tmp}/nothing.yaml"], "nothing.yaml does not exist"),
    "--config is a directory": (["run", "--config", "{tmp}/out"], "is a directory, not a file"),
    "--config not YAML": (["run", "--config", "{tmp}/broken.yaml"], "is not valid YAML"),
    "--config not a mapping": (["run", "--config", "{tmp}/list.yaml"], "must hold a mapping"),
    "--config unknown option": (["run", "--config", "{tmp}/typo.yaml"], "unknown option 'epochz'"),
    "--config bad option value": (["run", "--config", "{tmp}/negative.yaml"], "epochs: expected a positive integer"),
    "--config bad section field": (["run", "--config", "{tmp}/section.yaml"], "train.momentun is not a TrainConfig"),
    # leaderboards and the regression check
    "missing store": (["leaderboard", "--db", "{tmp}/nothing.db"], "does not exist"),
    "bad format": (["leaderboard", "--db", "{tmp}/results.db", "--format", "xml"], "invalid choice: 'xml'"),
    "check on a malformed CSV": (["check", "--baseline", "{tmp}/malformed.csv", "--db", "{tmp}/results.db"],
                                 "--baseline"),
    "check --current is a device file": (["check", "--baseline", "{tmp}/baseline.csv", "--current", "/dev/null"],
                                         "--current /dev/null is a character device, not a file"),
    "check --current is a directory": (["check", "--baseline", "{tmp}/baseline.csv", "--current", "{tmp}/out"],
                                       "is a directory, not a file"),
    "check on a baseline with duplicated rows": (["check", "--baseline", "{tmp}/doubled.csv", "--db",
                                                 "{tmp}/results.db"],
                                                "has duplicated rows: afd on digits/smallcnn Linf eps=0.15 (2 rows)"),
    "check on a missing baseline": (["check", "--baseline", "{tmp}/nothing.csv", "--db", "{tmp}/results.db"],
                                    "does not exist"),
    # grids and collection
    "grid without --out": (["run", "--methods", "ours", "--launcher", "submitit-local", "--db", "{tmp}/results.db"],
                           "--launcher submitit-local needs --out"),
    "slurm without sbatch": (["run", "--methods", "ours", "--launcher", "slurm", "--db", "{tmp}/results.db",
                              "--out", "{tmp}/grid"], "needs Slurm's sbatch"),
    "collect a missing folder": (["collect", "--out", "{tmp}/nothing", "--db", "{tmp}/results.db"],
                                 "is not a folder"),
    "collect a folder that is not a run": (["collect", "--out", "{tmp}", "--db", "{tmp}/results.db"],
                                           "holds no run.json"),
}


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, digits, digits_model):
    """A folder with a store holding one run, an output folder, and the bad files the matrix uses."""
    folder = tmp_path_factory.mktemp("bad-input")
    ResultsStore(str(folder / "results.db")).add(RunRecord(
        group_id="g", method="afd", method_version=1, dataset="digits", arch="smallcnn", seed=0, eps=0.15,
        norm="Linf", n_eval=100, metrics={"clean": 98.0, "pgd": 60.0}, config={}, flags=[], provenance={},
        wall_seconds=1.0))
    (folder / "out").mkdir()
    (folder / "out" / "keep.txt").write_text("an earlier result\n")
    (folder / "afile").write_text("not a folder and not a database\n")
    (folder / "corrupt.pt").write_bytes(b"\x00garbage" * 100)
    good = save_checkpoint(digits_model, folder / "smallcnn.pt", "smallcnn", digits)
    (folder / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (folder / "download.pt").write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>\n" + " " * 15)
    (folder / "empty.pt").write_bytes(b"")
    (folder / "notes.pt").write_text("weights: none\n\n")
    tampered = save_checkpoint(digits_model, folder / "tampered.pt", "smallcnn", digits)
    payload = torch.load(tampered, weights_only=True)
    payload["state_dict"]["head.bias"] += 1.0  # changed after it was written; its .sha256 still says before
    torch.save(payload, tampered)
    payload = torch.load(good, weights_only=True)
    payload["state_dict"]["head.weight"] = payload["state_dict"]["head.weight"][:3]
    payload["state_dict"]["head.bias"] = payload["state_dict"]["head.bias"][:3]
    torch.save(payload, folder / "three_classes.pt")
    for split in ("train", "test"):
        (folder / "empty_images" / split / "cat").mkdir(parents=True)
    from PIL import Image

    for split, classes in (("train", ("cat", "dog")), ("test", ("cat", "emu"))):
        for name in classes:
            (folder / "mismatched" / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / "mismatched" / split / name / "0.png")
    for tree, classes in (("corrupt_image", ("cat", "dog")), ("one_class", ("cat",))):
        for split in ("train", "test"):
            for name in classes:
                (folder / tree / split / name).mkdir(parents=True)
                Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / tree / split / name / "0.png")
    (folder / "corrupt_image" / "train" / "dog" / "bad.jpg").write_bytes(b"not a JPEG")
    (folder / "malformed.csv").write_text("this,is\nnot,a leaderboard,at all\n")
    (folder / "broken.yaml").write_text("methods: [ours\n")
    (folder / "list.yaml").write_text("- ours\n- trades\n")
    (folder / "typo.yaml").write_text("methods: ours\nepochz: 3\n")
    (folder / "negative.yaml").write_text("methods: ours\nepochs: -1\n")
    (folder / "section.yaml").write_text("methods: ours\ntrain: {momentun: 0.5}\n")
    (folder / "wrongtype.yaml").write_text("methods: ours\ntrain: {epochs: ten}\n")
    (folder / "baseline.csv").write_text("method,dataset,arch,eps,clean,pgd\nafd,digits,smallcnn,0.15,98.0,60.0\n")
    (folder / "doubled.csv").write_text("method,dataset,arch,eps,clean,pgd\n" +
                                        "afd,digits,smallcnn,0.15,98.0,60.0\n" * 2)
    return folder


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_touches_nothing(capsys, prepared, case):
    argv, expected = BAD_INPUTS[case]
    before = _snapshot(prepared)
    code = main([arg.replace("{tmp}", str(prepared)) for arg in argv] + ["--quiet"] * (argv[0] in ("run", "eval")))
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("bench: error: ")
    assert expected in lines[0]
    assert "Traceback" not in captured.err
    assert _snapshot(prepared) == before
