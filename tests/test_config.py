"""Presets and precedence: CLI > preset > dataset > dataclass default; --set parsing."""
import pytest

from robustbench_aft.config import PRESETS, build_run_config, parse_set_options
from robustbench_aft.errors import ConfigError, UnknownNameError


def test_digits_defaults_to_quick_and_other_datasets_to_paper():
    quick = build_run_config(["ours", "trades"])
    assert quick.preset == "quick" and quick.methods == ["afd", "trades"]
    assert quick.train.epochs == PRESETS["quick"]["train"]["epochs"] and quick.train.batch_size == 64
    assert quick.eval.eps is None  # left to the dataset's default
    paper = build_run_config(["afd"], dataset="cifar10")
    assert paper.preset == "paper" and paper.train.epochs == 20 and paper.train.batch_size == 128
    assert paper.eval.attack_options["pgd"]["relative_step"] == pytest.approx(0.003 / (8 / 255))


def test_cli_values_beat_the_preset_and_none_means_not_given():
    config = build_run_config(["afd"], train_overrides={"epochs": 3, "lr": None},
                              eval_overrides={"eps": 0.1, "attacks": None}, seeds=[0, 1], db=None)
    assert config.train.epochs == 3 and config.train.lr == PRESETS["quick"]["train"]["lr"]
    assert config.threat.eps == 0.1 and config.eval.attacks == PRESETS["quick"]["eval"]["attacks"]
    assert config.eval.eps is None  # the evaluator gets the threat model once it is resolved (prepare_run)
    assert config.seeds == [0, 1] and config.db == "runs/results.db"


def test_paper_preset_carries_the_inferred_cifar100_afd_weights_and_set_wins():
    config = build_run_config(["afd"], dataset="cifar100", method_params=parse_set_options(["ours.gamma=30"]))
    assert config.method_params["afd"] == {"alpha": 0.1, "beta": 1.0, "gamma": 30.0}


def test_set_options_are_typed_and_checked():
    assert parse_set_options(["afd.alpha=0.1", "trades.attack_steps=5", "mart.beta=8/2"]) == {
        "afd": {"alpha": 0.1}, "trades": {"attack_steps": 5}, "mart": {"beta": 4.0}}
    with pytest.raises(ConfigError, match="Did you mean 'alpha'"):
        parse_set_options(["afd.alpah=0.1"])
    with pytest.raises(ConfigError, match="attack_steps=ten: expected an integer"):  # types in words
        parse_set_options(["afd.attack_steps=ten"])
    with pytest.raises(ConfigError, match="METHOD.PARAM=VALUE"):
        parse_set_options(["alpha=0.1"])
    with pytest.raises(UnknownNameError, match="Did you mean 'trades'"):
        parse_set_options(["tradez.beta=1"])


def test_invalid_runs_are_rejected_in_one_line():
    with pytest.raises(ConfigError, match="unknown preset 'papr'. Did you mean 'paper'"):
        build_run_config(["afd"], preset="papr")
    with pytest.raises(ConfigError, match="duplicates"):
        build_run_config(["afd"], seeds=[0, 0])
    with pytest.raises(ConfigError, match="empty"):
        build_run_config([])
    with pytest.raises(UnknownNameError):
        build_run_config(["afdd"])


def test_paper_presets_come_from_each_method():
    config = build_run_config(["twins-at", "afd", "vaft"], dataset="tinyimagenet")
    assert config.method_params == {"twins-at": {"lambda_twins": 0.4, "weight_decay": 1e-3}}
    assert build_run_config(["afd"], dataset="cifar10").method_params == {}
    assert build_run_config(["afd"], dataset="cifar100", preset="quick").method_params == {}


def test_config_files_written_before_the_threat_section_still_load():
    """`eval: {eps: …, norm: …}` (config.yaml of earlier runs) becomes the threat model, eps as written."""
    from robustbench_aft.config import RunConfig

    legacy = {"methods": ["ours"], "eval": {"eps": "8/255", "norm": "Linf", "attacks": ["clean", "pgd"]}}
    config = RunConfig.from_cli({}, legacy, "old.yaml")
    assert config.threat.eps == pytest.approx(8 / 255) and config.threat.eps_text == "8/255"
    assert config.threat.norm == "Linf" and config.eval.attacks == ["clean", "pgd"] and config.eval.eps is None
    # The command line wins over the file, option by option.
    assert RunConfig.from_cli({"eps": "4/255", "epochs": 2}, legacy, "old.yaml").threat.eps == pytest.approx(4 / 255)
