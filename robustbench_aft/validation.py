"""Validation-based checkpoint selection: the held-out split, its per-epoch curve, and the choice.

Robust overfitting (Rice et al., ICML 2020, https://arxiv.org/abs/2002.11569): the test robust
accuracy of adversarial training often peaks before the last epoch. Papers report the last epoch;
MAIR and ARES pick a checkpoint by robust accuracy on validation data. We do both without touching
the test set: a seeded split of the *training* images, never seen by fine-tuning, evaluated with
clean accuracy and PGD-10 after every epoch. ``--select last`` evaluates the last weights (what
the papers report), ``--select best-val`` also the weights of the epoch with the highest validation
PGD accuracy; both results are kept in the store.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import Dataset

from .attacks import PGD, attacked_chunks
from .errors import ConfigError

if TYPE_CHECKING:
    from .tensorcache import TensorCache

SELECTIONS = ("last", "best-val")
VALIDATION_PGD_STEPS = 10
CHUNK = 256


def split_training_set(n_train: int, train_subset: Optional[int], val_size: int,
                       seed: int) -> Tuple[Optional[List[int]], List[int]]:
    """(fine-tuning indices, validation indices) of a training set of ``n_train`` images.

    One seeded permutation decides both. With ``train_subset`` the fine-tuning images are its first
    ``train_subset`` entries, exactly as before validation existed (so results fine-tuned earlier on
    a subset stay valid), and validation takes the next ``val_size``. Without a subset, validation
    takes the first ``val_size`` and fine-tuning the rest. ``None`` means "every training image".
    The two lists are sorted and disjoint.
    """
    if val_size < 0:
        raise ConfigError(f"--val-size must be >= 0, got {val_size}")
    subset = train_subset if train_subset is not None and train_subset < n_train else None
    if subset is None and val_size == 0:
        return None, []
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed)).tolist()
    if subset is None:
        if val_size >= n_train:
            raise ConfigError(f"--val-size {val_size} leaves no training image to fine-tune on ({n_train} in all)")
        return sorted(order[val_size:]), sorted(order[:val_size])
    outside = n_train - subset
    if val_size > outside:
        raise ConfigError(f"--val-size {val_size}: only {outside} training images lie outside --train-subset "
                          f"{subset}; lower one of them")
    return sorted(order[:subset]), sorted(order[subset:subset + val_size])


class ValidationSet:
    """The validation images, read once, and the clean + PGD-10 measurement on them.

    Like the feature-gap probe, the training split's augmentation (if any) is applied once under a
    fixed seed and then frozen, and the attack has its own seeded generator: validating never
    touches a global random generator, so it does not change training. With ``cache`` (the dataset's
    tensor cache) the images come from it and the augmentation is its batched one, drawn from a
    generator seeded by ``seed``: the same recipe, other draws than the per-image transforms'.
    """

    def __init__(self, train_set: Dataset, indices: Sequence[int], eps: float, norm: str, seed: int,
                 cache: Optional["TensorCache"] = None) -> None:
        self.indices = list(indices)
        if cache is not None:
            from .tensorcache import augment, to_float

            positions = torch.as_tensor(self.indices, dtype=torch.long)
            images = cache.train_images.cpu()[positions]
            self.x = to_float(augment(images, cache.augmentation, torch.Generator().manual_seed(seed)), cache.divisor)
            self.y = cache.train_labels.cpu()[positions]
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                items = [train_set[i] for i in indices]
            self.x = torch.stack([item[0] for item in items])
            self.y = torch.tensor([int(item[1]) for item in items])
        self.attack = PGD(eps, norm, steps=VALIDATION_PGD_STEPS)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.y)

    def measure(self, model: nn.Module, epoch: int) -> Dict[str, float]:
        """``{"epoch", "clean", "pgd", "seconds"}``: accuracies in percent; ``model``'s mode is restored."""
        start = time.perf_counter()
        clean_correct = robust_correct = 0
        for x, y, x_adv in attacked_chunks(self.attack, model, self.x, self.y, self.seed, CHUNK):
            with torch.no_grad():
                clean_correct += int((model(x).argmax(1) == y).sum())
                robust_correct += int((model(x_adv).argmax(1) == y).sum())
        return {"epoch": epoch, "clean": 100.0 * clean_correct / len(self),
                "pgd": 100.0 * robust_correct / len(self), "seconds": time.perf_counter() - start}


def is_better(point: Dict[str, float], best: Optional[Dict[str, float]]) -> bool:
    """Whether ``point`` beats ``best``: higher validation PGD accuracy, then higher clean accuracy.
    A tie keeps the earlier epoch (fewer updates, the same measured robustness)."""
    if best is None:
        return True
    return (point["pgd"], point["clean"]) > (best["pgd"], best["clean"])


def best_epoch(curve: List[Dict[str, float]]) -> Optional[int]:
    """The epoch ``best-val`` selects from a validation curve (None for an empty curve)."""
    best = None
    for point in curve:
        if is_better(point, best):
            best = point
    return None if best is None else int(best["epoch"])


def catastrophic_overfitting(curve: List[Dict[str, float]]) -> Optional[str]:
    """A warning when validation PGD accuracy falls by more than half between two consecutive epochs
    while clean accuracy rises: catastrophic overfitting, the known failure of single-step
    adversarial training (Wong et al., ICLR 2020, https://arxiv.org/abs/2001.03994, §5; the
    fast-AT family: FGSM-GA, Free-AT, ATAS). None when the curve shows no such drop."""
    for before, after in zip(curve, curve[1:]):
        if after["pgd"] < 0.5 * before["pgd"] and after["clean"] > before["clean"]:
            return (f"catastrophic overfitting: validation PGD accuracy fell from {before['pgd']:.1f} % "
                    f"(epoch {int(before['epoch'])}) to {after['pgd']:.1f} % (epoch {int(after['epoch'])}) "
                    f"while clean accuracy rose from {before['clean']:.1f} % to {after['clean']:.1f} %")
    return None
