"""The bench command: the documented happy path (the bad-input matrix is test_bad_input.py)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from robustbench_aft.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_shows_every_registry(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    for heading in ("## methods", "## datasets", "## archs", "## attacks"):
        assert heading in out
    for name in ("digits", "folder", "smallcnn", "wrn-34-10", "pgd", "aa-fast"):
        assert f"| {name} " in out
    assert "| afd          | attack_steps      | 10        | an integer >= 1" in out  # every parameter's range
    code, out, _ = run(capsys, "list", "attacks")
    assert code == 0 and "## datasets" not in out and "CW-∞" in out


def _subcommand_paths(parser, prefix=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _subcommand_paths(sub, prefix + (name,))


def test_every_subcommand_prints_its_help(capsys):
    """argparse formats help lazily: a stray '%' in a help text only fails when --help is asked for."""
    from robustbench_aft.cli import build_parser

    paths = [()] + list(_subcommand_paths(build_parser()))
    assert ("analyze", "tradeoff") in paths and ("compare",) in paths
    for path in paths:
        with pytest.raises(SystemExit) as exit_info:
            main([*path, "--help"])
        assert exit_info.value.code == 0, path
        assert "usage: bench" in capsys.readouterr().out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, digits_model, digits):
    from robustbench_aft.pretrained import save_checkpoint

    return str(save_checkpoint(digits_model, tmp_path_factory.mktemp("ckpt") / "natural.pt", "smallcnn", digits))


def test_pretrain_then_eval_prints_a_table(capsys, tmp_path):
    code, out, _ = run(capsys, "pretrain", "--dataset", "digits", "--arch", "smallcnn", "--epochs", "3", "--quiet")
    assert code == 0 and "test accuracy" in out and "saved:" in out
    code, out, _ = run(capsys, "pretrain", "--dataset", "digits", "--arch", "smallcnn", "--epochs", "3", "--quiet")
    assert code == 0 and out.startswith("cached:")

    table_file = tmp_path / "table.md"
    code, out, _ = run(capsys, "eval", "--checkpoint", "auto", "--dataset", "digits", "--arch", "smallcnn",
                       "--attacks", "clean,pgd,cw,aa", "--eps", "0.2", "--n-eval", "40", "--quiet",
                       "--output", str(table_file))
    assert code == 0, out
    assert "| attack" in out and "| worst" in out and "sanity flags" in out
    assert table_file.read_text().strip() == out.strip()


def test_eval_json_and_csv(capsys, checkpoint):
    code, out, _ = run(capsys, "eval", "--checkpoint", checkpoint, "--attacks", "pgd", "--eps", "8/255",
                       "--n-eval", "30", "--format", "json", "--quiet")
    assert code == 0
    document = json.loads(out)
    assert document["n"] == 30 and document["eps"] == pytest.approx(8 / 255)
    assert [row["attack"] for row in document["rows"]] == ["clean", "pgd", "worst"]
    assert document["accuracy"]["pgd"] <= document["accuracy"]["clean"]
    code, out, _ = run(capsys, "eval", "--checkpoint", checkpoint, "--attacks", "clean", "--n-eval", "30",
                       "--format", "csv", "--quiet")
    assert code == 0
    assert out.splitlines()[0] == "attack,accuracy,correct,n,seconds"


def test_wrong_checkpoint_arch_is_one_line(capsys, checkpoint):
    code, _, err = run(capsys, "eval", "--checkpoint", checkpoint, "--arch", "resnet18")
    assert code == 2 and "saved for arch 'smallcnn'" in err and len(err.strip().splitlines()) == 1


def test_output_to_a_directory_is_refused_before_any_work(capsys, checkpoint, tmp_path):
    code, _, err = run(capsys, "eval", "--checkpoint", checkpoint, "--output", str(tmp_path))
    assert code == 2 and "is a directory" in err


@pytest.mark.skipif(shutil.which("bench") is None
                    and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "bench")),
                    reason="the bench console script is not installed in this environment")
def test_console_script_reports_errors_without_traceback():
    bench = shutil.which("bench") or os.path.join(os.path.dirname(sys.executable), "bench")
    result = subprocess.run([bench, "eval", "--checkpoint", "auto", "--dataset", "nope"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("bench: error: unknown dataset 'nope'")
    assert "Traceback" not in result.stderr


def test_config_file_options_sections_and_command_line_precedence(capsys, tmp_path):
    """The file's options and sections reach the RunConfig, the command line wins over the file, and
    --print-config's output loads back to the same configuration."""
    import yaml

    config_file = tmp_path / "experiment.yaml"
    config_file.write_text("methods: [ours, trades]\nseeds: [0, 2]\nepochs: 3\neps: 8/255\n"
                           "set:\n  afd: {alpha: 0.1}\n  trades: {beta: 3}\n"
                           "train: {momentum: 0.8, weight_decay: 0.0}\neval: {attack_options: {pgd: {steps: 5}}}\n")
    code, out, err = run(capsys, "run", "--config", str(config_file), "--epochs", "4", "--set", "afd.alpha=0.2",
                         "--print-config")
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert printed["methods"] == ["afd", "trades"] and printed["seeds"] == [0, 2]
    assert printed["train"]["epochs"] == 4  # the command line beats the file's 3
    assert printed["train"]["momentum"] == 0.8 and printed["train"]["weight_decay"] == 0.0
    assert printed["threat"]["eps"] == pytest.approx(8 / 255) and printed["threat"]["eps_text"] == "8/255"
    assert printed["eval"]["attack_options"] == {"pgd": {"steps": 5}}
    assert printed["set"] == {"afd": {"alpha": 0.2}, "trades": {"beta": 3.0}}
    again = tmp_path / "printed.yaml"
    again.write_text(out)
    code, out_again, _ = run(capsys, "run", "--config", str(again), "--print-config")
    assert code == 0 and yaml.safe_load(out_again) == printed


def test_config_file_values_are_checked_like_their_options(capsys, tmp_path):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text("methods: ours\nset: {afd: {attack_steps: -3}}\n")
    code, _, err = run(capsys, "run", "--config", str(config_file), "--print-config")
    assert code == 2 and "afd.attack_steps=-3: must be an integer >= 1" in err
    config_file.write_text("methods: ours\nepochs: 2\ntrain: {epochs: 3}\n")
    code, _, err = run(capsys, "run", "--config", str(config_file), "--print-config")
    assert code == 2 and "train.epochs is also given as a top-level option" in err


def test_train_config_fields_marked_flag_are_run_options(capsys):
    """--momentum, --weight-decay, --ema, --num-workers and --feature-gap-probe come from TrainConfig."""
    import yaml

    code, out, _ = run(capsys, "run", "--methods", "vaft", "--momentum", "0.5", "--weight-decay", "0",
                       "--ema", "on", "--feature-gap-probe", "0", "--print-config")
    assert code == 0
    train = yaml.safe_load(out)["train"]
    assert (train["momentum"], train["weight_decay"], train["ema"], train["feature_gap_probe"]) == (0.5, 0.0, True, 0)
    code, out, _ = run(capsys, "run", "--methods", "vaft", "--print-config")
    train = yaml.safe_load(out)["train"]
    assert (train["momentum"], train["weight_decay"], train["ema"]) == (0.9, 5e-4, None)
    assert main(["run", "--methods", "vaft", "--ema", "maybe"]) == 2
    assert "--ema: expected on or off, got 'maybe'" in capsys.readouterr().err
