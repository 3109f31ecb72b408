"""AFD's invariants (methods.md §1.10) and the snapshot update of §1.4."""
import copy

import pytest
import torch
from torch.nn import functional as F

from robustbench_aft.afd import AFD, confused_label, separation_loss
from robustbench_aft.config import TrainConfig
from robustbench_aft.data import collect
from robustbench_aft.engine import EMA, build_method, ema_decay, lr_table

LR, WD = 0.025, 5e-4


@pytest.fixture
def batch(digits):
    x, y = collect(digits.test, range(0, 64))
    return x, y, torch.arange(64)


@pytest.fixture
def afd(digits_model):
    torch.manual_seed(0)
    method = build_method("afd", None, eps=0.15, train=TrainConfig(lr=LR, weight_decay=WD))
    method.prepare(digits_model)
    method.optimizers = method.configure_optimizers()
    return method


def test_identity_init_reproduces_the_pretrained_model(afd, digits_model, batch):
    x = batch[0]
    afd.eval()
    with torch.no_grad():
        assert torch.equal(afd.student(x), digits_model.eval()(x))
        afd.student.train()
        out = afd.student.branches(x)
    assert torch.equal(out["logits_intrinsic"], out["logits_confused"])
    assert torch.equal(out["intrinsic_features"], out["features"])
    assert torch.equal(out["confused_features"], out["features"])


def test_separation_loss_is_beta_with_zero_gradient_at_identity(afd, batch):
    afd.train()
    out = afd.student.branches(batch[0])
    loss = afd.params.beta * separation_loss(out["intrinsic_features"], out["confused_features"])
    assert loss.item() == pytest.approx(0.25, abs=1e-6)
    grads = torch.autograd.grad(loss, [afd.student.intrinsic.weight, *afd.student.classifier.body.parameters()],
                                allow_unused=True)
    assert max(g.abs().max().item() for g in grads if g is not None) < 1e-6


def test_confused_label_hand_example():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 2.0, 1.0], [1.0, 0.5, 4.0]])
    labels = torch.tensor([0, 2, 1])
    assert confused_label(logits, labels).tolist() == [2, 1, 2]
    random_logits, random_labels = torch.randn(500, 10), torch.randint(0, 10, (500,))
    assert (confused_label(random_logits, random_labels) != random_labels).all()


def test_gradient_routing(afd, batch):
    afd.train()
    terms = afd.training_step(batch)
    student = afd.student
    groups = {
        "backbone": list(student.classifier.body.parameters()),
        "d1": [student.intrinsic.weight], "d2": [student.confused.weight],
        "head": list(student.classifier.head.parameters()),
    }

    def grads(loss, group):
        result = torch.autograd.grad(loss, groups[group], retain_graph=True, allow_unused=True)
        return [torch.zeros(1) if g is None else g for g in result]

    def is_zero(loss, group):
        return all(bool((g == 0).all()) for g in grads(loss, group))

    assert is_zero(terms["confusion"], "backbone") and is_zero(terms["confusion"], "d1")
    assert not is_zero(terms["confusion"], "d2") and not is_zero(terms["confusion"], "head")
    assert is_zero(terms["separation"], "head")
    assert is_zero(terms["robust"], "d2")
    assert not is_zero(terms["robust"], "backbone") and not is_zero(terms["robust"], "d1")


def test_d2_moves_only_by_its_loss_weight_decay_applies_with_alpha_zero(digits_model, batch):
    method = build_method("afd", {"alpha": 0.0}, eps=0.15, train=TrainConfig(lr=LR, weight_decay=WD))
    method.prepare(digits_model)
    method.optimizers = method.configure_optimizers()
    method.train()
    method.update(batch)
    dim = method.student.confused.weight.shape[0]
    torch.testing.assert_close(method.student.confused.weight.detach(), (1 - LR * WD) * torch.eye(dim),
                               rtol=0, atol=1e-7)
    assert (1 - LR * WD) == pytest.approx(0.9999875)


def test_teacher_is_frozen_through_updates(afd, batch):
    before = {k: v.clone() for k, v in afd.teacher.state_dict().items()}
    afd.train()
    for _ in range(3):
        afd.update(batch)
    assert not afd.teacher.training
    for key, value in afd.teacher.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_update_is_the_official_order_with_snapshot_gradients(afd, batch):
    """Head C after one update: θ1 = θ0 − lr(g_neg + λθ0); θ2 = θ1 − lr(g_neg + g_rob + λθ1)."""
    reference = copy.deepcopy(afd)
    torch.manual_seed(1)
    afd.train()
    afd.update(batch)
    torch.manual_seed(1)
    reference.train()
    terms = reference.training_step(batch)
    head = reference.student.classifier.head.weight
    g_neg, = torch.autograd.grad(terms["confusion"], head, retain_graph=True)
    g_rob, = torch.autograd.grad(terms["robust"], head)
    theta0 = head.detach()
    theta1 = theta0 - LR * (g_neg + WD * theta0)
    theta2 = theta1 - LR * (g_neg + g_rob + WD * theta1)
    torch.testing.assert_close(afd.student.classifier.head.weight.detach(), theta2, rtol=1e-5, atol=1e-7)


def test_one_forward_gradients_equal_three_separate_forward_backward_passes(afd, batch):
    """The three gradients from one graph equal three full forward + backward passes, each on a
    fresh copy (the attack runs on BN running statistics that a train-mode forward would move).
    One update first moves D1 and D2 off the identity, where L_cos has no gradient."""
    afd.train()
    afd.update(batch)
    copies = [copy.deepcopy(afd) for _ in range(3)]
    torch.manual_seed(7)
    afd.train()
    fast = afd.snapshot_gradients(afd.training_step(batch))
    separate = {}
    for method, term in zip(copies, ("confusion", "separation", "robust")):
        torch.manual_seed(7)
        method.train()
        method.training_step(batch)[term].backward()
        shared = method._shared_parameters()
        separate[term] = [torch.zeros_like(p) if p.grad is None else p.grad for p in shared]
        if term == "confusion":
            separate["confusion_confused"] = [p.grad for p in method.student.confused.parameters()]
    separate["confusion_shared"] = separate.pop("confusion")
    assert set(fast) == set(separate)
    for key, grads in fast.items():
        assert len(grads) == len(separate[key])
        for one_forward, own_pass in zip(grads, separate[key]):
            torch.testing.assert_close(one_forward, own_pass, rtol=1e-5, atol=1e-7)
    for key in fast:
        assert sum(float(g.abs().sum()) for g in fast[key]) > 0, key


def test_ema_decay_rule_and_first_update():
    assert [ema_decay(s) for s in range(3)] == pytest.approx([0.1, 2 / 11, 0.25])
    assert ema_decay(8989) < 0.999 and ema_decay(8990) == 0.999
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    ema = EMA(module)
    with torch.no_grad():
        module[0].weight.add_(1.0)
        module[1].running_mean.add_(2.0)
        module[1].num_batches_tracked.add_(5)
    ema.update(module)
    current = module.state_dict()
    for key in ("0.weight", "1.running_mean", "1.running_var"):
        torch.testing.assert_close(ema.shadow[key], 0.1 * initial[key] + 0.9 * current[key])
    assert ema.shadow["1.num_batches_tracked"].item() == 5  # integer buffers are copied


def test_lr_table_for_20_epochs(afd):
    expected = [0.025] * 10 + [0.02] * 2 + [0.01] * 2 + [0.005] * 2 + [0.0025] * 2 + [0.00125] * 2
    assert lr_table(afd, 20, 0.025) == pytest.approx(expected)
    ten = lr_table(afd, 10, 0.025)  # the same shape on a shorter run
    assert ten == pytest.approx(expected[1::2])


def test_folding_d1_into_the_head_is_exact(afd, batch):
    with torch.no_grad():
        afd.student.intrinsic.weight.add_(0.01 * torch.randn_like(afd.student.intrinsic.weight))
    h = torch.randn(5, afd.student.intrinsic.weight.shape[0])
    head = afd.student.classifier.head
    torch.testing.assert_close(head(afd.student.intrinsic(h)),
                               h @ (head.weight @ afd.student.intrinsic.weight).T + head.bias)
    plain = afd.export()
    afd.eval()
    assert type(plain) is type(afd.teacher)
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in afd.teacher.parameters())
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(batch[0]), afd.student(batch[0]), rtol=1e-5, atol=1e-5)


def test_training_attack_is_bounded_and_leaves_bn_statistics_alone(afd, batch):
    from robustbench_aft.method import pgd_attack

    x, y, _ = batch
    afd.train()
    buffers = {k: v.clone() for k, v in afd.student.state_dict().items() if "running" in k}
    eps = 0.15
    x_adv = pgd_attack(afd.student, afd.student, x, y, loss_fn=F.cross_entropy, eps=eps,
                       step_size=0.007 / (8 / 255) * eps, steps=10, start="uniform", bn_mode="eval")
    assert (x_adv - x).abs().max().item() <= eps + 1e-7
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert afd.student.training  # mode restored
    for key, value in afd.student.state_dict().items():
        if key in buffers:
            assert torch.equal(value, buffers[key]), key


def test_registered_as_ours(afd):
    from robustbench_aft.registry import METHODS

    assert METHODS.get("ours") is AFD and METHODS.canonical("ours") == "afd"


def test_disentangler_follows_a_float64_classifier(digits_model, batch):
    """D1/D2 take the wrapped model's dtype: one AFD update on a float64 model runs and stays float64."""
    model64 = copy.deepcopy(digits_model).double()
    method = build_method("afd", None, eps=0.15, train=TrainConfig(lr=LR, weight_decay=WD))
    method.prepare(model64)
    method.optimizers = method.configure_optimizers()
    assert method.student.intrinsic.weight.dtype == torch.float64
    assert torch.equal(method.student.confused.weight, torch.eye(method.student.confused.weight.shape[0],
                                                                 dtype=torch.float64))
    x, y, index = batch
    terms = method.update((x.double(), y, index))
    assert torch.isfinite(terms["loss"]) and terms["loss"].dtype == torch.float64
    assert method.export()(x.double()).dtype == torch.float64
