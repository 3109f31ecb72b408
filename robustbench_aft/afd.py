"""AFD ("ours"): adversarial fine-tuning via feature disentanglement.

Zhou et al., "Mitigating Feature Gap for Adversarial Robustness by Feature Disentanglement",
AAAI 2025, arXiv 2401.14707; official code changzhang777/AFD ``tl+sl.py``. The specification
followed here is ``methods.md`` §1 (the official code, not only the paper).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .method import Method, afd_lr
from .params import NONNEGATIVE, param, training_attack_params
from .registry import METHODS


def confused_label(logits_intrinsic: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The label the confused branch is trained to predict (methods.md §1.2 step 4).

    The wrong prediction itself when the intrinsic branch is wrong; its runner-up class when it is
    right. So the confused label never equals the true label.
    """
    logits = logits_intrinsic.detach()
    prediction = logits.argmax(dim=1)
    runner_up = logits.scatter(1, prediction[:, None], float("-inf")).argmax(dim=1)
    return torch.where(prediction == labels, runner_up, prediction)


def confusion_loss(logits_confused: torch.Tensor, confused_labels: torch.Tensor) -> torch.Tensor:
    """L_neg = CE(C(D2 sg(h)), ŷ) (before the weight α): D2 learns the confusing direction (§1.2 step 6)."""
    return F.cross_entropy(logits_confused, confused_labels)


def separation_loss(intrinsic_features: torch.Tensor, confused_features: torch.Tensor) -> torch.Tensor:
    """L_cos = mean_i cos(z1_i, z2_i) (before the weight β): the raw cosine, minimum at −1 (§1.2 step 7)."""
    return F.cosine_similarity(intrinsic_features, confused_features, dim=1).mean()


def alignment_loss(intrinsic_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """1 − mean_i cos(z1_i, φ_pre(x)_i): align adversarial intrinsic features with the pre-trained
    model's features of the *natural* image (§1.2 steps 5 and 8; weight γ)."""
    return 1.0 - F.cosine_similarity(intrinsic_features, teacher_features, dim=1).mean()


class DisentangledClassifier(nn.Module):
    """Backbone φ + disentangler (D1 intrinsic, D2 confused; square, no bias) + the shared head C.

    ``forward`` (what attacks and evaluation see) is C(D1 φ(x)); :meth:`branches` returns both
    branches with D2 fed the *detached* features, as in the official ``_FS`` models.
    """

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier
        dim = classifier.head.in_features
        # D1 and D2 live where the head lives, in its dtype: a float64 or CUDA classifier gets a
        # float64 or CUDA disentangler rather than torch's default float32 on the CPU.
        like = {"dtype": classifier.head.weight.dtype, "device": classifier.head.weight.device}
        self.intrinsic = nn.Linear(dim, dim, bias=False, **like)
        self.confused = nn.Linear(dim, dim, bias=False, **like)
        with torch.no_grad():
            self.intrinsic.weight.copy_(torch.eye(dim, **like))
            self.confused.weight.copy_(torch.eye(dim, **like))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.head(self.intrinsic(self.classifier.forward_features(x)))

    def branches(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.classifier.forward_features(x)
        intrinsic_features = self.intrinsic(features)
        confused_features = self.confused(features.detach())
        return {
            "features": features,
            "intrinsic_features": intrinsic_features,
            "confused_features": confused_features,
            "logits_intrinsic": self.classifier.head(intrinsic_features),
            "logits_confused": self.classifier.head(confused_features),
        }

    def folded(self) -> nn.Module:
        """A plain copy of the classifier with D1 folded into the head: W' = W_C · W_1, bias unchanged."""
        plain = copy.deepcopy(self.classifier)
        with torch.no_grad():
            plain.head.weight.copy_(self.classifier.head.weight @ self.intrinsic.weight)
        return plain


@METHODS.register("afd", "ours")
class AFD(Method):
    """AFD (ours): feature disentanglement with a confused branch, separation and alignment, AAAI 2025.

    Zhou et al., "Mitigating Feature Gap for Adversarial Robustness by Feature Disentanglement",
    AAAI 2025, https://arxiv.org/abs/2401.14707; official code changzhang777/AFD ``tl+sl.py``.
    Threat model L∞. Follows the official code (methods.md §1): PGD-10 (step 0.007 at 8/255,
    unclipped uniform start, eval mode) on C∘D1∘φ; one train-mode forward on x_adv; three
    optimisers (D2; the rest; the rest again) with the official order and gradient accumulation;
    an EMA of the weights (buffers included) is evaluated; D1 is folded into the head on export.

    Deliberate deviation ("snapshot" semantics, methods.md §1.4): the released step sequence
    only ran on PyTorch < 1.2, where the third backward silently used weights already moved by
    the second optimiser. Here all three gradients are taken at the pre-step weights from the
    one forward, then applied in the official order; the difference is O(lr·grad) in g_rob.
    EMA integer buffers (BN's ``num_batches_tracked``) are copied, not blended.

    L2 (the official code has none; our choice): the shared L2 PGD training attack.
    """

    reference = "arXiv 2401.14707; changzhang777/AFD tl+sl.py"
    capturable = True

    uses_ema = True
    # INFERRED from the result-folder names in AFD's scripts (methods.md §1.6); CIFAR-10 and
    # Tiny-ImageNet use the defaults.
    paper_presets = {"cifar100": {"alpha": 0.1, "beta": 1.0, "gamma": 50.0}}

    @dataclass
    class Params(training_attack_params(steps=10, step="0.007", eps="8/255", source="tl+sl.py default",
                                        eps_source="tl+sl.py (8/255)")):
        alpha: float = param(0.05, "weight of the confusion loss L_neg", "tl+sl.py default, README", NONNEGATIVE)
        beta: float = param(0.25, "weight of the separation loss L_cos (--sigma in the code)", "tl+sl.py default",
                            NONNEGATIVE)
        gamma: float = param(25.0, "weight of the alignment with the pre-trained features", "tl+sl.py default",
                             NONNEGATIVE)

    def lr_at(self, epoch: int, total_epochs: int, base_lr: float) -> float:
        """AFD's own schedule (``tl+sl.py``, methods.md §1.6), on the 20-epoch scale."""
        return afd_lr(epoch, total_epochs, base_lr)

    def prepare(self, model: nn.Module) -> None:
        self.student = DisentangledClassifier(copy.deepcopy(model))
        self.make_teacher(model)

    def _shared_parameters(self) -> List[nn.Parameter]:
        confused = {id(p) for p in self.student.confused.parameters()}
        return [p for p in self.student.parameters() if id(p) not in confused]

    def configure_optimizers(self) -> List[torch.optim.Optimizer]:
        def sgd(params):
            return torch.optim.SGD(params, lr=self.optim.lr, momentum=self.optim.momentum,
                                   weight_decay=self.optim.weight_decay)
        # optimizer1: D2 only; optimizer2 and optimizer: everything else, with separate momentum buffers.
        return [sgd(self.student.confused.parameters()), sgd(self._shared_parameters()),
                sgd(self._shared_parameters())]

    def training_step(self, batch: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Dict[str, torch.Tensor]:
        x, y, _ = batch
        p = self.params
        x_adv = self.training_attack(x, y)
        out = self.student.branches(x_adv)
        with torch.no_grad():
            teacher_features = self.teacher.forward_features(x)
        confusion = p.alpha * confusion_loss(out["logits_confused"], confused_label(out["logits_intrinsic"], y))
        separation = p.beta * separation_loss(out["intrinsic_features"], out["confused_features"])
        ce = F.cross_entropy(out["logits_intrinsic"], y)
        alignment = p.gamma * alignment_loss(out["intrinsic_features"], teacher_features)
        # ``robust`` is the official L_rob = CE + γ·alignment, the third optimiser's loss.
        return {"loss": confusion + separation + ce + alignment, "confusion": confusion, "separation": separation,
                "ce": ce, "alignment": alignment, "robust": ce + alignment}

    def snapshot_gradients(self, terms: Dict[str, torch.Tensor]) -> Dict[str, List[torch.Tensor]]:
        """The gradients of the confusion loss L_neg (on D2 and the shared parameters), the separation
        loss L_cos and L_rob (on the shared ones), all three from the one graph of
        :meth:`training_step`, at the current weights.

        The official step runs three ``backward`` calls with ``retain_graph=True`` (methods.md §1.4);
        reusing one forward for the three costs one backward each and no extra forward.
        """
        confused = list(self.student.confused.parameters())
        shared = self._shared_parameters()

        def gradients(loss, params, retain):
            grads = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
            return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]

        g_confusion = gradients(terms["confusion"], confused + shared, retain=True)
        return {"confusion_confused": g_confusion[:len(confused)], "confusion_shared": g_confusion[len(confused):],
                "separation": gradients(terms["separation"], shared, retain=True),
                "robust": gradients(terms["robust"], shared, retain=False)}

    def update(self, batch: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Three gradients at the same weights, applied in the official order (see the class note)."""
        terms = self.training_step(batch)
        optimizer_confused, optimizer_separation, optimizer_robust = self.optimizers
        confused = list(self.student.confused.parameters())
        shared = self._shared_parameters()
        grads = self.snapshot_gradients(terms)
        g_neg_confused, g_neg_shared = grads["confusion_confused"], grads["confusion_shared"]
        g_cos, g_rob = grads["separation"], grads["robust"]

        for p, g in zip(confused, g_neg_confused):
            p.grad = g
        optimizer_confused.step()
        # The .grad accumulated when optimizer2 steps: g_neg + g_cos, i.e. g_cos on φ and D1 and
        # g_neg on C, since each of the two is zero on the other parameters (methods.md §1.3).
        second = [g_n + g_c for g_n, g_c in zip(g_neg_shared, g_cos)]
        for p, g in zip(shared, second):
            p.grad = g
        optimizer_separation.step()
        for p, g2, g3 in zip(shared, second, g_rob):
            p.grad = g2 + g3
        optimizer_robust.step()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        return {name: value.detach() for name, value in terms.items()}

    def head_input(self) -> nn.Module:
        # The paper's claim is about the features its classifier uses: D1 φ, before D1 is folded away.
        return self.student.intrinsic

    def export(self) -> nn.Module:
        return self.student.folded()
