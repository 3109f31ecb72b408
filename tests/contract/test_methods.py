"""Every registered method: one CPU step gives finite named losses, moves the weights, exports a plain
classifier, and an interrupted fine-tuning resumed from its checkpoint ends bit-identical."""
import dataclasses
from dataclasses import fields

import pytest
import torch

from robustbench_aft.config import TrainConfig
from robustbench_aft.data import collect
from robustbench_aft.engine import fine_tune
from robustbench_aft.errors import ConfigError, Interrupted
from robustbench_aft.method import Method
from robustbench_aft.models import ImageClassifier
from robustbench_aft.params import COUNT, POSITIVE, PROBABILITY, Range, param_docs
from robustbench_aft.registry import METHODS


@pytest.mark.parametrize("name", METHODS.names())
def test_one_step_contract(name, digits_model, digits):
    torch.manual_seed(0)
    x, y = collect(digits.train, range(32))
    method = METHODS.get(name)(eps=0.15)
    assert isinstance(method, Method) and isinstance(method.version, int)
    method.prepare(digits_model)
    method.optimizers = method.configure_optimizers()
    method.on_fit_start(digits.train)
    method.on_epoch_start(1, 20)
    method.train()
    before = {k: v.clone() for k, v in method.trainable_state().state_dict().items()}
    terms = method.update((x, y, torch.arange(32)))
    assert "loss" in terms and len(terms) >= 2
    for term, value in terms.items():
        assert value.dim() == 0 and torch.isfinite(value), term
    changed = [k for k, v in method.trainable_state().state_dict().items()
               if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed
    exported = method.export()
    assert isinstance(exported, ImageClassifier) and not isinstance(exported, Method)
    assert sum(p.numel() for p in exported.parameters()) == sum(p.numel() for p in digits_model.parameters())
    with torch.no_grad():
        assert exported.eval()(x).shape == (32, 10)


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_states_its_learning_rate_schedule(name):
    """The base class has no schedule to inherit: each method names its own, and it starts at the run's lr
    (TWINS: its own) and never rises."""
    method = METHODS.get(name)(eps=0.15)
    assert type(method).lr_at is not Method.lr_at
    rates = [method.lr_at(epoch, 20, 0.025) for epoch in range(1, 21)]
    assert all(0 < later <= earlier for earlier, later in zip(rates, rates[1:])), rates


def test_a_method_without_a_schedule_says_so_by_name():
    class Unscheduled(Method):
        """A method that forgot lr_at."""

    with pytest.raises(NotImplementedError, match="Unscheduled states no learning-rate schedule"):
        Unscheduled(eps=0.15).lr_at(1, 20, 0.025)


@pytest.mark.parametrize("name", METHODS.names())
def test_params_are_documented_with_a_source(name):
    for row in param_docs(METHODS.get(name).Params):
        assert row["help"] and row["source"], (name, row["name"])


@pytest.mark.parametrize("name", METHODS.names())
def test_params_declare_their_valid_range_and_defaults_lie_inside_it(name):
    """Every field states its range (a Range, or FLAG for a bool); the defaults pass it, and a value
    outside it is refused with a one-line error before anything runs."""
    params_cls = METHODS.get(name).Params
    for f in fields(params_cls):
        assert "valid" in f.metadata, (name, f.name)
        valid = f.metadata["valid"]
        assert valid is None if f.type in (bool, "bool") else isinstance(valid, Range), (name, f.name)
    METHODS.get(name)(eps=0.15)  # the defaults pass the check
    numeric = [f for f in fields(params_cls) if f.metadata["valid"] is not None]
    for f in numeric:
        bad = dataclasses.replace(params_cls(), **{f.name: float("nan")})
        with pytest.raises(ConfigError, match=f"{f.name}=nan"):
            METHODS.get(name)(bad, eps=0.15)


def test_range_bounds_by_hand():
    assert COUNT.accepts(1) and not COUNT.accepts(0) and not COUNT.accepts(2.5) and not COUNT.accepts(True)
    assert POSITIVE.accepts(1e-9) and not POSITIVE.accepts(0.0) and not POSITIVE.accepts(float("inf"))
    assert PROBABILITY.accepts(0.0) and PROBABILITY.accepts(1.0) and not PROBABILITY.accepts(1.0001)
    assert Range(0.0, 180.0, low_open=True).describe() == "a finite number > 0 and <= 180"
    assert COUNT.describe() == "an integer >= 1"


@pytest.mark.parametrize("name", METHODS.names())
def test_prepare_leaves_the_pretrained_model_untouched(name, digits_model, digits):
    torch.manual_seed(0)
    x, y = collect(digits.train, range(16))
    before = {k: v.clone() for k, v in digits_model.state_dict().items()}
    method = METHODS.get(name)(eps=0.15)
    method.prepare(digits_model)
    method.optimizers = method.configure_optimizers()
    method.on_fit_start(digits.train)
    method.on_epoch_start(1, 20)
    method.train()
    method.update((x, y, torch.arange(16)))
    for key, value in digits_model.state_dict().items():
        assert torch.equal(value, before[key]), key


# Methods whose resume restores state beyond weights and optimisers (AFD's EMA and three optimisers,
# Free-AT's replayed δ, ATAS' per-example δ and statistics, RiFT's stage) stay in the fast tier; the
# others, whose resume is the shared engine path, run in the slow one.
FAST_RESUME = {"afd", "free-at", "atas", "rift"}
RESUME_CASES = [name if name in FAST_RESUME else pytest.param(name, marks=pytest.mark.slow)
                for name in METHODS.names()]


@pytest.mark.parametrize("name", RESUME_CASES)
def test_resume_inside_an_epoch_is_bit_identical(name, digits_model, digits, tmp_path):
    # 3 batches per epoch, 4 epochs; the stop comes in epoch 3, batch 2 (after RiFT's stage switch).
    from ..conftest import StopAfter

    # A small validation split is enough to resume its curve and best state; RiFT's MRC set is cut the same way.
    train = TrainConfig(epochs=4, batch_size=64, train_subset=192, val_size=32)
    options = dict(eps=0.15, seed=2, device=torch.device("cpu"), progress=False,
                   params={"probe_size": 64} if name == "rift" else None)
    straight = fine_tune(name, digits_model, digits, train, **options)
    with pytest.raises(Interrupted):
        fine_tune(name, digits_model, digits, train, out_dir=tmp_path, stop=StopAfter(8), **options)
    resumed = fine_tune(name, digits_model, digits, train, out_dir=tmp_path, resume=True, **options)
    expected, actual = straight.model.state_dict(), resumed.model.state_dict()
    assert expected.keys() == actual.keys()
    different = [k for k in expected if not torch.equal(expected[k], actual[k])]
    assert not different, different[:5]
