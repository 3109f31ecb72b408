"""Training steps written the way the official scripts structure them, for throughput comparison only.

Same maths as our methods (methods.md), but with the official code's passes: TRADES recomputes the
natural output at every attack step and runs a second natural forward in train mode (yaodongyu/TRADES
``trades.py``); the attacks of vAFT/MART back-propagate into the weights too (``loss.backward()`` on
the input, as their scripts do); AFD does its three backward passes on a retained graph with a
separate teacher forward that tracks gradients (changzhang777/AFD ``tl+sl.py``, in the "snapshot"
order of methods.md §1.4). fp32, NCHW. Each factory takes the natural model, eps and device and
returns ``step(x, y)``.
"""
from __future__ import annotations

import copy
from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch import nn

Step = Callable[[torch.Tensor, torch.Tensor], None]
STEP_SIZE = 0.007
STEPS = 10


def _sgd(parameters) -> torch.optim.SGD:
    return torch.optim.SGD(parameters, lr=0.01, momentum=0.9, weight_decay=5e-4)


def _pgd_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, start: torch.Tensor) -> torch.Tensor:
    model.eval()
    x_adv = start.detach()
    for _ in range(STEPS):
        x_adv.requires_grad_(True)
        F.cross_entropy(model(x_adv), y).backward()
        x_adv = torch.min(torch.max(x_adv.detach() + STEP_SIZE * x_adv.grad.sign(), x - eps), x + eps).clamp(0, 1)
        model.zero_grad()
    model.train()
    return x_adv


def vaft(natural: nn.Module, eps: float, device: torch.device) -> Step:
    model = copy.deepcopy(natural).to(device)
    optimizer = _sgd(model.parameters())

    def step(x, y):
        x_adv = _pgd_backward(model, x, y, eps, x + torch.empty_like(x).uniform_(-eps, eps))
        optimizer.zero_grad()
        F.cross_entropy(model(x_adv), y).backward()
        optimizer.step()

    return step


def trades(natural: nn.Module, eps: float, device: torch.device, beta: float = 6.0) -> Step:
    model = copy.deepcopy(natural).to(device)
    optimizer = _sgd(model.parameters())
    kl = nn.KLDivLoss(reduction="sum")

    def step(x, y):
        model.eval()
        x_adv = x.detach() + 0.001 * torch.randn_like(x)
        for _ in range(STEPS):
            x_adv.requires_grad_(True)
            loss = kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
            grad, = torch.autograd.grad(loss, [x_adv])
            x_adv = torch.min(torch.max(x_adv.detach() + STEP_SIZE * grad.sign(), x - eps), x + eps).clamp(0, 1)
        model.train()
        optimizer.zero_grad()
        logits = model(x)
        loss_robust = kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1)) / len(x)
        (F.cross_entropy(logits, y) + beta * loss_robust).backward()
        optimizer.step()

    return step


def mart(natural: nn.Module, eps: float, device: torch.device, beta: float = 6.0) -> Step:
    model = copy.deepcopy(natural).to(device)
    optimizer = _sgd(model.parameters())

    def step(x, y):
        model.eval()
        x_adv = x.detach() + 0.001 * torch.randn_like(x)
        for _ in range(STEPS):
            x_adv.requires_grad_(True)
            grad, = torch.autograd.grad(F.cross_entropy(model(x_adv), y), [x_adv])
            x_adv = torch.min(torch.max(x_adv.detach() + STEP_SIZE * grad.sign(), x - eps), x + eps).clamp(0, 1)
        model.train()
        optimizer.zero_grad()
        logits, logits_adv = model(x), model(x_adv)
        adv_probs = F.softmax(logits_adv, dim=1)
        runner_up = torch.argsort(adv_probs, dim=1)[:, -2]
        new_y = torch.where(runner_up == y, torch.argsort(adv_probs, dim=1)[:, -1], runner_up)
        loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
        nat_probs = F.softmax(logits, dim=1)
        true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
        kl = (F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(1) * (1.0000001 - true_probs))
        (loss_adv + beta * kl.mean()).backward()
        optimizer.step()

    return step


def afd(natural: nn.Module, eps: float, device: torch.device, alpha: float = 0.05, beta: float = 0.25,
        gamma: float = 25.0) -> Step:
    backbone = copy.deepcopy(natural).to(device)
    teacher = copy.deepcopy(natural).to(device).eval()
    dim = backbone.head.in_features
    d1 = nn.Linear(dim, dim, bias=False).to(device)
    d2 = nn.Linear(dim, dim, bias=False).to(device)
    with torch.no_grad():
        d1.weight.copy_(torch.eye(dim))
        d2.weight.copy_(torch.eye(dim))
    shared = list(backbone.parameters()) + list(d1.parameters())
    optimizer1, optimizer2, optimizer = _sgd(d2.parameters()), _sgd(shared), _sgd(shared)

    def forward(x):
        return backbone.head(d1(backbone.forward_features(x)))

    def step(x, y):
        backbone.eval()
        x_adv = x.detach() + torch.empty_like(x).uniform_(-eps, eps)
        for _ in range(STEPS):
            x_adv.requires_grad_(True)
            grad, = torch.autograd.grad(F.cross_entropy(forward(x_adv), y), [x_adv])
            x_adv = torch.min(torch.max(x_adv.detach() + STEP_SIZE * grad.sign(), x - eps), x + eps).clamp(0, 1)
        backbone.train()
        features = backbone.forward_features(x_adv)
        z1, z2 = d1(features), d2(features.detach())
        logits1, logits2 = backbone.head(z1), backbone.head(z2)
        prediction = logits1.detach().argmax(1)
        runner_up = logits1.detach().scatter(1, prediction[:, None], float("-inf")).argmax(1)
        confused = torch.where(prediction == y, runner_up, prediction)
        teacher_features = teacher.forward_features(x)  # tracks gradients, as the official forward does
        loss_neg = alpha * F.cross_entropy(logits2, confused)
        loss_cos = beta * F.cosine_similarity(z1, z2, dim=1).mean()
        loss_rob = F.cross_entropy(logits1, y) + gamma * (1 - F.cosine_similarity(z1, teacher_features.detach(),
                                                                                   dim=1).mean())
        for o in (optimizer1, optimizer2, optimizer):
            o.zero_grad()
        loss_neg.backward(retain_graph=True)
        optimizer1.step()
        loss_cos.backward(retain_graph=True)
        second = [None if p.grad is None else p.grad.clone() for p in shared]
        loss_rob.backward()
        rob = [None if p.grad is None else p.grad.clone() for p in shared]
        for p, g in zip(shared, second):
            p.grad = g
        optimizer2.step()
        for p, g in zip(shared, rob):
            p.grad = g
        optimizer.step()

    return step


REFERENCE_STEPS: Dict[str, Callable[[nn.Module, float, torch.device], Step]] = {
    "vaft": vaft, "trades": trades, "twins-trades": trades, "mart": mart, "afd": afd,
}
