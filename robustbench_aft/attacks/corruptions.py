"""Common corruptions: Hendrycks & Dietterich's 15 corruptions × 5 severities (CIFAR-10-C-like)."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.nn import functional as F

from .. import _compat
from ..errors import ConfigError
from ..modes import eval_mode
from ..registry import ATTACKS
from ._base import Attack

if TYPE_CHECKING:
    from ..data import DataBundle

# The 15 "common" corruptions of the benchmark, in the paper's order (noise, blur, weather, digital).
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
SEVERITIES = (1, 2, 3, 4, 5)
# imagecorruptions refuses images under 32×32: smaller ones are corrupted at 32×32 and scaled back.
MIN_SIDE = 32
GENERATED = "CIFAR-10-C-like (generated)"


def variant_seed(seed: int, position: int, corruption: int, severity: int) -> int:
    """The numpy seed of one (image, corruption, severity): fixed by the evaluation seed and the
    image's position, so every variant is reproducible alone and independent of the batch split."""
    return int(np.random.SeedSequence([seed, position, corruption, severity]).generate_state(1)[0])


def corrupt_image(image: torch.Tensor, corruption: str, severity: int, seed: int) -> torch.Tensor:
    """One [0, 1] image (C, H, W) corrupted by imagecorruptions, back in [0, 1] with its shape.

    The library works on 8-bit RGB images of at least 32×32: a grey image is repeated to RGB and
    averaged back, a smaller one is resized (bilinear) to 32×32 and back. Its corruptions draw
    from numpy's global generator, which is seeded for the call and then restored."""
    library = _compat.import_imagecorruptions()
    channels, height, width = image.shape
    work = image.float()
    if min(height, width) < MIN_SIDE:
        side = (max(MIN_SIDE, height), max(MIN_SIDE, width))
        work = F.interpolate(work[None], size=side, mode="bilinear", align_corners=False)[0].clamp(0, 1)
    rgb = work.expand(3, -1, -1) if channels == 1 else work
    pixels = (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        corrupted = library.corrupt(pixels, severity=severity, corruption_name=corruption)
    finally:
        np.random.set_state(state)
    result = torch.from_numpy(np.asarray(corrupted, dtype=np.float32)[..., :3] / 255.0).permute(2, 0, 1)
    result = result.mean(dim=0, keepdim=True) if channels == 1 else result
    if result.shape[1:] != (height, width):
        result = F.interpolate(result[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    return result.clamp(0, 1).to(image.dtype)


@functools.lru_cache(maxsize=None)
def _released_array(folder: str, corruption: str) -> np.ndarray:
    return np.load(Path(folder) / f"{corruption}.npy", mmap_mode="r")


@ATTACKS.register("corruptions")
class Corruptions(Attack):
    """Mean accuracy over the 15 common corruptions × 5 severities of Hendrycks & Dietterich
    ("Benchmarking Neural Network Robustness to Common Corruptions and Perturbations", ICLR 2019,
    arXiv 1903.12261), generated on the evaluation points with the ``imagecorruptions`` package
    (their code, packaged; see :func:`.._compat.import_imagecorruptions`), seeded per image and
    variant: "CIFAR-10-C-like (generated)", not the released CIFAR-10-C files, which are read
    instead when the dataset has them (``cifar10`` with ``--data-dir`` holding ``CIFAR-10-C/``).

    Not an eps-ball attack: eps and norm do not apply, it is left out of the worst-case column, and
    its per-point outcomes are one bit per (variant, point). About 0.3 s per 32×32 image on one CPU
    core for the 75 variants (glass blur is half of it).
    """

    kind = "corruption"
    eps_ball = False
    white_box = False
    # Always classified in full precision (outcomes below), so its budget must never say bf16.
    runs_in_bf16 = False
    column_position = 60

    def __init__(self, eps: float, norm: str = "Linf", batch_size: int = 256,
                 corruptions: Sequence[str] = CORRUPTIONS, severities: Sequence[int] = SEVERITIES,
                 released: Optional[str] = None) -> None:
        super().__init__(eps, norm, batch_size)
        unknown = [name for name in corruptions if name not in CORRUPTIONS]
        if unknown or not corruptions:
            raise ConfigError(f"unknown corruption(s) {', '.join(unknown) or '(none given)'}; "
                              f"choose from {', '.join(CORRUPTIONS)}")
        if not set(severities) <= set(SEVERITIES) or not severities:
            raise ConfigError(f"corruption severities must be among 1-5, got {list(severities)}")
        self.corruptions = tuple(corruptions)
        self.severities = tuple(severities)
        self.released = released

    @classmethod
    def data_options(cls, data: DataBundle) -> Dict[str, Any]:
        # A dataset with the released CIFAR-10-C files is evaluated on them, not on generated ones.
        return {"released": data.released_corruptions} if data.released_corruptions else {}

    @property
    def source(self) -> str:
        return f"released files in {self.released}" if self.released else GENERATED

    def budget(self, num_classes: int = 10):
        library = ("released files" if self.released
                   else f"imagecorruptions {_compat.package_version('imagecorruptions')}")
        return {"corruptions": len(self.corruptions), "severities": list(self.severities), "source": self.source,
                "library": library}

    def variants(self) -> List[Tuple[str, int]]:
        """(corruption, severity) in the order of :meth:`outcomes`' rows."""
        return [(name, severity) for name in self.corruptions for severity in self.severities]

    def corrupted(self, x: torch.Tensor, seed: int, positions: Sequence[int], corruption: str,
                  severity: int) -> torch.Tensor:
        """The batch under one corruption and severity; ``positions`` are the points' test-set indices."""
        if self.released:
            rows = [(severity - 1) * len(_released_array(self.released, "labels")) // 5 + int(p) for p in positions]
            images = torch.from_numpy(np.stack([_released_array(self.released, corruption)[r] for r in rows]))
            return (images.float() / 255.0).permute(0, 3, 1, 2).to(x.device, x.dtype)
        index = CORRUPTIONS.index(corruption)
        return torch.stack([corrupt_image(image, corruption, severity, variant_seed(seed, int(p), index, severity))
                            for image, p in zip(x.cpu(), positions)]).to(x.device)

    def outcomes(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, positions: Sequence[int],
                 clean_correct: Optional[torch.Tensor] = None, precision: str = "fp32",
                 attacked: Optional[torch.nn.Module] = None) -> torch.Tensor:
        """Booleans (variants, batch): whether ``model`` classifies each corrupted point correctly.

        Every point, also one misclassified clean: this is not an attack on the clean-correct points
        but the accuracy on other images (``clean_correct`` is not used). Always in full precision,
        without autocast (``precision`` is not used); nothing is attacked (``attacked`` is not used).
        """
        rows = []
        with eval_mode(model), torch.no_grad():
            for corruption, severity in self.variants():
                rows.append(model(self.corrupted(x, seed, positions, corruption, severity)).argmax(dim=1) == y)
        return torch.stack(rows)

    def perturb(self, model, x, y, generator):
        raise TypeError("corruptions is not a perturbation attack: the evaluator calls outcomes()")

    def breakdown(self, outcomes: torch.Tensor) -> Dict[str, float]:
        """Accuracy per corruption and per ``corruption@severity`` from the (variants, points) outcomes."""
        return breakdown(self.variants(), outcomes)

    def threat_budget(self, eps_given: str) -> Dict[str, Any]:
        return {}  # not an eps-ball attack: eps and norm do not apply


def breakdown(variants: List[Tuple[str, int]], outcomes: torch.Tensor) -> Dict[str, float]:
    """Accuracy in % per corruption (over its severities) and per ``corruption@severity``."""
    table: Dict[str, float] = {}
    for name in dict.fromkeys(name for name, _ in variants):
        rows = [i for i, (other, _) in enumerate(variants) if other == name]
        table[name] = 100.0 * float(outcomes[rows].sum()) / max(1, outcomes[rows].numel())
        for i in rows:
            table[f"{name}@{variants[i][1]}"] = 100.0 * float(outcomes[i].sum()) / max(1, outcomes[i].numel())
    return table
