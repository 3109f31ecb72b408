"""The evaluation-attack contract and the PGD core the iterative attacks share.

Every attack takes images in [0, 1] and returns adversarial images in [0, 1] within the eps-ball
(L∞ or L2). The base class puts the model in eval mode for the attack and restores its mode
afterwards (torchattacks' ``Attack.__call__`` pattern), so no attack runs on BatchNorm batch
statistics by accident. Step sizes are fractions of eps, so one setting serves every dataset:
at eps = 8/255, PGD's step eps/4 is the usual 2/255.

Add an attack with one new file in this package holding one decorated class (the package
imports every module in it, and the leaderboard, ``bench check`` and the evaluator read the class
attributes and the methods with defaults of :class:`Attack`, so nothing else is edited)::

    @ATTACKS.register("myattack")
    class MyAttack(Attack):
        def perturb(self, model, x, y, generator): ...
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..devices import autocast
from ..modes import eval_mode, frozen_parameters

if TYPE_CHECKING:
    from ..data import DataBundle

NORMS = ("Linf", "L2")


class Attack:
    """Base class of evaluation attacks.

    Args:
        eps: perturbation budget in pixel units ([0, 1] images).
        norm: ``Linf`` or ``L2``.
        batch_size: batch size for attacks that split their input themselves (AutoAttack).

    A new attack implements :meth:`perturb` and nothing else; the evaluator reads everything it
    does differently from the class attributes and the methods with defaults below
    (:meth:`outcomes`, :meth:`breakdown`, :meth:`threat_budget`, :meth:`masking_flags`,
    :meth:`data_options`), never from the attack's name or ``kind``.

    After a call, :attr:`flags` holds any sanity warnings the attack itself raised.

    An attack whose per-point result does not depend on the other points of the batch may set
    ``attacks_subsets = True`` and accept ``active`` (a boolean mask) in :meth:`perturb`: it then
    draws its randomness for the whole batch, as without a mask, and spends gradient steps only on
    the active points, leaving the others at their start. The evaluator passes the points that are
    still classified correctly; other attacks always get the whole batch.
    """

    attacks_subsets = False
    # Where its column sits in leaderboards, left to right; an attack without one lands after the
    # built-in ones (then by name).
    column_position: ClassVar[int] = 100
    # Part of AFD's Avg column, the mean of clean, PGD and AutoAttack accuracy (methods.md §1.8).
    in_avg: ClassVar[bool] = False
    # An AutoAttack variant: runs at ``EvalConfig.aa_precision``, and PGD accuracy far above its
    # accuracy is flagged as likely gradient masking.
    autoattack: ClassVar[bool] = False
    # A label for people and tables: "white-box", "transfer", "corruption" or "none" (clean). The
    # evaluator does not read it: what differs between kinds is in the attributes and methods here.
    kind: ClassVar[str] = "white-box"
    # Its images lie in the eps-ball around the test points (clean trivially): its per-point outcomes
    # take part in the worst-case column and in the export of the worst-case images.
    eps_ball: ClassVar[bool] = True
    # It attacks the evaluated model's own gradients: an attack that does better without them
    # (:meth:`masking_flags`) is compared with the strongest of these.
    white_box: ClassVar[bool] = True
    # It averages over the model's randomness (expectation over transformation): a model with random
    # outputs is flagged unless such an attack ran.
    averages_randomness: ClassVar[bool] = False
    # Crafts on a second model, which the evaluator passes to the constructor as ``source``.
    needs_source: ClassVar[bool] = False
    # Runs in verified bf16 when ``--eval-precision``/``--aa-precision bf16`` asks for it
    # (:func:`classified_correctly`); False for what has no attack to speed up and stays fp32 always
    # (clean, the reference every attack starts from; corruptions).
    runs_in_bf16: ClassVar[bool] = True

    def __init__(self, eps: float, norm: str = "Linf", batch_size: int = 256) -> None:
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = float(eps)
        self.norm = norm
        self.batch_size = batch_size
        self.flags: List[str] = []

    @classmethod
    def data_options(cls, data: DataBundle) -> Dict[str, Any]:
        """Constructor options the dataset supplies, below the user's own
        ``--attack-options``: none by default; corruptions read the released files from it."""
        return {}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 0,
                 active: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attack ``model`` at (x, y) in eval mode; ``seed`` fixes random starts.

        ``active`` (optional boolean mask): the points worth attacking. Attacks with
        ``attacks_subsets`` skip the others, which then hold no adversarial example.
        """
        self.flags = []
        generator = torch.Generator(device=x.device)
        generator.manual_seed(seed)
        with eval_mode(model), frozen_parameters(model):
            if self.attacks_subsets and active is not None:
                x_adv = self.perturb(model, x, y, generator, active=active)
            else:
                x_adv = self.perturb(model, x, y, generator)
        return x_adv.detach()

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def outcomes(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, positions: Sequence[int],
                 clean_correct: Optional[torch.Tensor] = None, precision: str = "fp32",
                 attacked: Optional[nn.Module] = None) -> torch.Tensor:
        """Booleans, one per point of the batch: whether ``model`` still classifies the point
        correctly under this attack (the per-sample results the evaluator stores and combines).

        ``clean_correct`` (None for clean itself): the points classified correctly without attack.
        A point misclassified clean counts as broken by every attack (AutoAttack's convention), so
        only the correct ones are attacked, and nothing runs when there are none. The attack runs
        under ``precision`` (autocast) and its images are classified as :func:`classified_correctly`
        says (bf16: verified in fp32); the images must stay in the eps-ball and the [0, 1] box.
        ``positions``: the points' test-set indices, for attacks seeded per image. ``attacked``: the
        model the attack runs on, by default ``model`` (the evaluator gives the BatchNorm-folded copy of
        folding.py in fp32); the images are always classified by ``model``.
        """
        self.flags = []
        if clean_correct is not None and not bool(clean_correct.any()):
            return clean_correct.clone()
        active = clean_correct.to(x.device) if clean_correct is not None else None
        with autocast(x.device, precision):
            x_adv = self(model if attacked is None else attacked, x, y, seed=seed, active=active)
        self.check_perturbation(x, x_adv.float())
        return classified_correctly(model, x_adv, y, precision, active)

    def check_perturbation(self, x: torch.Tensor, x_adv: torch.Tensor) -> None:
        """Raise when ``x_adv`` has another shape than ``x`` or leaves the eps-ball or the [0, 1] box:
        a number computed on such images would not measure this threat model."""
        name = type(self).__name__
        if x_adv.shape != x.shape:
            raise RuntimeError(f"attack {name} returned shape {tuple(x_adv.shape)} for input {tuple(x.shape)}")
        delta = (x_adv - x).flatten(1)
        size = delta.abs().max(dim=1).values if self.norm == "Linf" else delta.norm(dim=1)
        if bool((size > self.eps + 1e-5).any()) or x_adv.min() < -1e-6 or x_adv.max() > 1 + 1e-6:
            raise RuntimeError(f"attack {name} left the {self.norm} eps-ball of radius {self.eps} or the [0, 1] box")

    def breakdown(self, outcomes: torch.Tensor) -> Dict[str, float]:
        """Accuracies in % of parts of the attack (corruptions: per corruption and severity) from the
        outcomes of every evaluated point; none by default."""
        return {}

    def budget(self, num_classes: int = 10) -> Dict[str, Any]:
        """The attack's own settings beyond eps, norm and precision (steps, restarts, step size, loss,
        version...) for a task of ``num_classes`` classes: stored with every metric, so that a column
        never mixes budgets silently."""
        return {}

    def threat_budget(self, eps_given: str) -> Dict[str, Any]:
        """The threat model stored with the budget: eps as run and as given (``8/255``), and the norm;
        nothing for an attack without an eps-ball of its own (clean, corruptions)."""
        return {"eps": self.eps, "eps_given": eps_given, "norm": self.norm}

    def masking_flags(self, name: str, accuracy: float, white_box: str, white_box_accuracy: float) -> List[str]:
        """Gradient-masking warnings from this attack's ``accuracy`` (in %, registered as ``name``) set
        against the strongest white-box attack that ran (``white_box`` at ``white_box_accuracy``);
        none by default (the transfer attack has one)."""
        return []


def classified_correctly(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, precision: str,
                         active: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Booleans, one per point: whether ``model`` still classifies the attack's image ``x_adv`` as ``y``
    (False for the points outside ``active``, which were not attacked).

    ``fp32``: one fp32 forward pass. ``bf16`` is *verified* bf16: the images are classified under bf16
    autocast, and every point that bf16 prediction calls broken is classified again with autocast off
    (the model's own fp32 weights); it counts as broken only if the fp32 model is wrong on that same
    image too. So verified bf16 never counts a point broken that the fp32 model classifies correctly,
    and it can only count fewer breaks than the bf16 attack found, never more (docs/protocol.md).
    """
    with torch.no_grad():
        with autocast(x_adv.device, precision):
            correct = model(x_adv).argmax(dim=1) == y
        if active is not None:
            correct &= active
        if precision != "bf16":
            return correct
        broken = ~correct if active is None else ~correct & active
        if bool(broken.any()):
            # Autocast off explicitly: a caller's own autocast region must not make this a bf16 pass again.
            with torch.autocast(x_adv.device.type, enabled=False):
                correct[broken] = model(x_adv[broken].float()).argmax(dim=1) == y[broken]
    return correct


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy, summed, so each sample's gradient does not depend on the batch size."""
    return F.cross_entropy(logits, labels, reduction="sum")


def cw_margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample CW margin max_{j≠y} z_j − z_y, summed over the batch (the L∞ CW loss).

    Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", S&P 2017
    (arXiv 1608.04644), the f_6 objective without the confidence clamp, as used by the CW∞ column of
    TRADES/MART/AFD-style tables. Unlike changzhang777/ANCRA's evaluation, the margin is per sample,
    not clamped after summing over the batch (methods.md §1.8).
    """
    true_logit = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, labels[:, None], float("-inf"))
    return (other.max(dim=1).values - true_logit).sum()


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project perturbations onto the L∞ or L2 ball of radius eps (per sample)."""
    if norm == "Linf":
        return delta.clamp(-eps, eps)
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta * _per_sample((eps / norms).clamp(max=1.0), delta)


def into_ball_and_box(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """``x_adv`` projected onto the eps-ball around ``x`` and clipped to [0, 1]. L∞ by min/max (exact:
    a coordinate inside the ball keeps its value), L2 radially (:func:`project`)."""
    if norm == "Linf":
        return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return (x + project(x_adv - x, eps, norm)).clamp(0, 1)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


def random_in_ball(x: torch.Tensor, eps: float, norm: str,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A random perturbation in the eps-ball, one per sample: uniform per coordinate in L∞ (the
    usual PGD start); in L2 a uniformly random direction scaled by a uniform radius in [0, eps]
    (the L2 start of Madry's ``robustness`` library and of our L2 training attacks). ``generator``
    None draws from torch's global generator (training attacks, seeded by the engine)."""
    if norm == "Linf":
        return torch.empty_like(x).uniform_(-eps, eps, generator=generator)
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    unit = direction / _per_sample(direction.flatten(1).norm(dim=1).clamp_min(1e-12), x)
    radius = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) * eps
    return unit * _per_sample(radius, x)


def ascent_direction(gradient: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent step of unit size in the norm: the gradient's sign in L∞ (FGSM/PGD), the
    gradient divided by its per-sample L2 norm in L2. A step of size a is ``a · ascent_direction``."""
    if norm == "Linf":
        return gradient.sign()
    return gradient / _per_sample(gradient.flatten(1).norm(dim=1).clamp_min(1e-12), gradient)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, steps: int,
        step_size: float, loss_fn, generator: torch.Generator, random_start: bool = True,
        active: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Projected gradient ascent of ``loss_fn`` on the eps-ball around x, clipped to [0, 1].

    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018
    (arXiv 1706.06083). L∞: signed gradient steps; L2: normalised gradient steps. The random start
    is uniform in the L∞ ball, or a uniformly scaled random direction in the L2 ball.

    With ``active`` (a boolean mask), the start is drawn for the whole batch exactly as without it,
    and only the active points take steps; the others are returned at their start. Since the loss
    is a per-sample sum and the model is in eval mode, each active point's result is the one it
    gets in the full batch.
    """
    if eps == 0:
        return x.clone()
    if random_start:
        noise = random_in_ball(x, eps, norm, generator)
        x_adv = (x + noise).clamp(0, 1)
    else:
        x_adv = x.clone()
    if active is not None:
        start = x_adv
        x, y, x_adv = x[active], y[active], x_adv[active]
    x_adv = pgd_steps(model, x, y, x_adv, loss_fn=loss_fn, eps=eps, step_size=step_size, steps=steps, norm=norm)
    if active is not None:
        start = start.clone()
        start[active] = x_adv
        return start
    return x_adv


def pgd_steps(forward, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, *, loss_fn, eps: float,
              step_size: float, steps: int, norm: str = "Linf") -> torch.Tensor:
    """The PGD iteration every attack here shares, evaluation (:func:`pgd`) and training
    (:func:`..method.pgd_attack`) alike: ``steps`` ascent steps on ``loss_fn(forward(x'), y)`` from
    ``x_adv``, each projected onto the eps-ball around ``x`` and clipped to [0, 1].

    Steps along :func:`ascent_direction` (L∞: the sign; L2: the normalised gradient), then
    :func:`into_ball_and_box`. Returns a detached tensor.
    """
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = loss_fn(forward(x_adv), y)
        grad, = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = into_ball_and_box(x_adv + step_size * ascent_direction(grad, norm), x, eps, norm)
    return x_adv.detach()


class _IterativeAttack(Attack):
    """PGD on ``loss_fn`` with one uniform random start; ``steps`` and the step as a fraction of eps."""

    loss_fn = staticmethod(cross_entropy_loss)
    default_steps = 20
    attacks_subsets = True

    def __init__(self, eps: float, norm: str = "Linf", batch_size: int = 256, steps: Optional[int] = None,
                 relative_step: float = 0.25) -> None:
        super().__init__(eps, norm, batch_size)
        self.steps = self.default_steps if steps is None else steps
        self.relative_step = relative_step

    def perturb(self, model, x, y, generator, active=None):
        return pgd(model, x, y, eps=self.eps, norm=self.norm, steps=self.steps,
                   step_size=self.relative_step * self.eps, loss_fn=self.loss_fn, generator=generator, active=active)

    def budget(self, num_classes: int = 10) -> Dict[str, Any]:
        return {"steps": self.steps, "restarts": 1, "step": f"{self.relative_step:g}·eps",
                "loss": self.loss_fn.__name__, "start": "random"}


def attacked_chunks(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int,
                    chunk: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(x, y, x_adv)`` for consecutive chunks of a fixed probe set (validation, feature gap), moved to
    the model's device, each attacked with the seed ``seed`` + its first position, so a chunk's
    adversarial examples do not depend on how many chunks came before. The model stays in eval mode
    while the caller reads each chunk; its own mode is restored at the end."""
    device = next(model.parameters()).device
    with eval_mode(model):
        for begin in range(0, len(y), chunk):
            x_chunk, y_chunk = x[begin:begin + chunk].to(device), y[begin:begin + chunk].to(device)
            yield x_chunk, y_chunk, attack(model, x_chunk, y_chunk, seed=seed + begin)
