"""The transfer attack and its gradient-masking flag; common corruptions; both stored and refused
where paired tests do not apply."""
import numpy as np
import pytest
import torch
from torch import nn

from robustbench_aft.attacks.corruptions import CORRUPTIONS, SEVERITIES, corrupt_image, variant_seed
from robustbench_aft.config import EvalConfig
from robustbench_aft.data import collect
from robustbench_aft.errors import ConfigError
from robustbench_aft.evaluator import evaluate

CPU = torch.device("cpu")


class _Quantised(nn.Module):
    """Rounds the input to the 17 grey levels of digits first: a piecewise-constant forward whose
    input gradient is zero almost everywhere (gradient masking by construction)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 16) / 16)


def test_transfer_beats_white_box_pgd_on_a_masked_model_and_is_flagged(digits_model, digits):
    masked = _Quantised(digits_model).eval()  # evaluate() restores this mode, and digits_model is shared
    config = EvalConfig(attacks=["clean", "pgd", "transfer"], eps=0.15, n_eval=60, transfer_from="natural")
    result = evaluate(masked, digits, config, CPU, progress=False, source_model=digits_model)
    # measured: clean 100.0, white-box PGD 100.0 (zero gradients), transfer from the smooth model 11.7
    assert result.accuracy["pgd"] >= 90 and result.accuracy["transfer"] <= 25
    assert result.accuracy["worst"] == result.accuracy["transfer"]
    assert any("transfer accuracy" in flag and "gradient masking" in flag for flag in result.flags)
    assert result.budgets["transfer"]["source"] == "natural" and result.budgets["transfer"]["steps"] == 20


def test_transfer_on_an_unmasked_model_is_not_flagged(digits_model, digits):
    config = EvalConfig(attacks=["clean", "pgd", "transfer"], eps=0.15, n_eval=60, transfer_from="natural")
    result = evaluate(digits_model, digits, config, CPU, progress=False, source_model=digits_model)
    assert not any("transfer accuracy" in flag for flag in result.flags)


def test_transfer_without_a_source_is_a_one_line_error(digits_model, digits):
    with pytest.raises(ConfigError, match="--transfer-from"):
        evaluate(digits_model, digits, EvalConfig(attacks=["transfer"], n_eval=8), CPU, progress=False)


@pytest.fixture(scope="module")
def images(digits):
    return collect(digits.test, range(0, 40, 10))[0]  # 4 test images, 1×8×8


def test_every_corruption_at_every_severity_changes_the_image_in_the_box_and_is_reproducible(images):
    for index, corruption in enumerate(CORRUPTIONS):
        for severity in SEVERITIES:
            for position, image in enumerate(images):
                seed = variant_seed(0, position, index, severity)
                corrupted = corrupt_image(image, corruption, severity, seed)
                assert corrupted.shape == image.shape and corrupted.dtype == image.dtype
                assert corrupted.min() >= 0 and corrupted.max() <= 1
                assert (corrupted - image).abs().max() > 1e-3, (corruption, severity)
                torch.testing.assert_close(corrupt_image(image, corruption, severity, seed), corrupted, rtol=0, atol=0)


def test_numpy_global_generator_is_left_alone(images):
    np.random.seed(7)
    expected = np.random.rand()
    np.random.seed(7)
    corrupt_image(images[0], "gaussian_noise", 3, 123)
    assert np.random.rand() == expected


def test_corruption_accuracy_falls_with_severity(digits_model, digits):
    config = EvalConfig(attacks=["clean", "corruptions"], n_eval=24,
                        attack_options={"corruptions": {"corruptions": ["gaussian_noise", "contrast", "defocus_blur"]}})
    result = evaluate(digits_model, digits, config, CPU, progress=False)
    parts = result.breakdown["corruptions"]
    by_severity = [np.mean([parts[f"{name}@{s}"] for name in ("gaussian_noise", "contrast", "defocus_blur")])
                   for s in SEVERITIES]
    # measured on this model (mean over the three corruptions): 72.2, 68.1, 47.2, 36.1, 31.9
    assert by_severity[0] > by_severity[2] > by_severity[4]
    assert by_severity[0] - by_severity[4] >= 30
    assert len(result.correct["corruptions"]) == 3 * 5 * 24
    assert result.accuracy["corruptions"] == pytest.approx(np.mean(by_severity), abs=1e-6)
    assert result.accuracy["worst"] <= result.accuracy["clean"]  # corruptions stay out of the worst case
    assert result.budgets["corruptions"]["source"] == "CIFAR-10-C-like (generated)"
    assert result.budgets["corruptions"]["library"].startswith("imagecorruptions 1.1")


def test_budgets_and_breakdown_round_trip_through_the_store_and_corruptions_refuse_paired_tests(tmp_path):
    from robustbench_aft.compare import compare_methods
    from robustbench_aft.results import ResultsStore, RunRecord

    store = ResultsStore(str(tmp_path / "r.db"))
    budgets = {"pgd": {"attack": "PGD", "steps": 20, "eps": 0.15, "norm": "Linf", "precision": "fp32"},
               "corruptions": {"attack": "Corruptions", "source": "CIFAR-10-C-like (generated)"}}
    breakdown = {"corruptions": {"fog": 40.0, "fog@1": 60.0, "fog@5": 20.0}}
    record = RunRecord(group_id="g", method="vaft", method_version=1, dataset="digits", arch="smallcnn", seed=0,
                       eps=0.15, norm="Linf", n_eval=2, metrics={"clean": 100.0, "pgd": 50.0, "corruptions": 40.0},
                       config={}, flags=[], provenance={}, wall_seconds=1.0, indices=[0, 1],
                       per_sample={"clean": "11", "pgd": "10", "corruptions": "1000"}, budgets=budgets,
                       breakdown=breakdown)
    run_id = store.add(record)
    again = store.record(run_id)
    assert again.budgets == budgets and again.breakdown == breakdown
    with pytest.raises(ConfigError, match="one outcome per corrupted variant"):
        compare_methods(str(tmp_path / "r.db"), "vaft", "natural", metric="corruptions")

    from robustbench_aft.analysis import render_report

    page = render_report(str(tmp_path / "r.db"), tmp_path / "report.html").read_text()
    section = page[page.index("<h2>Common corruptions</h2>"):]
    assert "corruptions on digits/smallcnn: CIFAR-10-C-like (generated)" in section
    assert "<th>fog</th>" in section and "<td>40.0</td>" in section and "fog@1" not in section
