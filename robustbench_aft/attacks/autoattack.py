"""AutoAttack (Croce & Hein, ICML 2020) through pyautoattack: ``aa`` and ``aa-fast``, and the base of
every AutoAttack version (``aa_rand.py``, ``aa_plus.py``)."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from .. import _compat
from ..registry import ATTACKS
from ._base import Attack


class _Fp32Logits(nn.Module):
    """``model`` with its logits cast to fp32. pyautoattack keeps its running losses in the logits'
    dtype and mixes them with fp32 tensors, so under bf16 autocast Square's ``index_put`` fails on
    any model with points left after APGD; fp32 logits keep that bookkeeping in fp32 while the
    model's layers still run under the caller's bf16 autocast."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).float()


class AutoAttackVersion(Attack):
    """One of pyautoattack's versions (``standard``, ``plus``, ``rand``, or ``custom`` with
    ``attack_names``), run as that package runs it; its own sanity warnings become flags."""

    autoattack = True
    version = "standard"
    attack_names: Optional[List[str]] = None

    def budget(self, num_classes=10):
        settings = _compat.autoattack_budget(eps=self.eps, norm=self.norm, version=self.version,
                                             attacks=self.attack_names, num_classes=num_classes)
        return {"version": self.version, **settings,
                "library": f"pyautoattack {_compat.package_version('pyautoattack')}"}

    @staticmethod
    def library_seed(generator: torch.Generator, device: torch.device) -> int:
        """The seed pyautoattack gets, drawn from the batch's generator (benchmarks/throughput.py calls
        pyautoattack directly with it to compare outcomes)."""
        return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=device).item())

    def perturb(self, model, x, y, generator):
        if self.eps == 0:
            return x.clone()
        seed = self.library_seed(generator, x.device)
        with torch.no_grad():
            num_classes = model(x[:1]).shape[1]
        with _compat.captured_autoattack_flags() as records:
            x_adv = _compat.run_autoattack(
                _Fp32Logits(model), x, y, eps=self.eps, norm=self.norm, version=self.version, attacks=self.attack_names,
                seed=seed, device=x.device, batch_size=self.batch_size, num_classes=num_classes,
            )
        self.flags = [f"AutoAttack: {message}" for message in records]
        return x_adv.to(x.device)


@ATTACKS.register("aa")
class AutoAttack(AutoAttackVersion):
    """AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square 5000 queries), Croce & Hein, ICML 2020."""

    version = "standard"
    column_position = 30
    in_avg = True


@ATTACKS.register("aa-fast")
class AutoAttackFast(AutoAttackVersion):
    """APGD-CE + APGD-T only, for quick looks; never reported as an ``aa`` number."""

    version = "custom"
    attack_names = ["apgd-ce", "apgd-t"]
    column_position = 40
