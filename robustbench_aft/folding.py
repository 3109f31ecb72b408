"""BatchNorm folded into the convolution before it, for the attacks of an fp32 evaluation.

In eval mode a BatchNorm after a convolution is an affine map per channel, so the pair is one
convolution with rescaled weights and a bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``, applied to
every such pair by ``torch.fx.experimental.optimization.fuse``). The attacks run on that copy, which
computes the same function up to float rounding with one pass over memory less per layer: AutoAttack
standard on the 360 digits points of the fine-tuned AFD smallcnn took 73.7 s unfolded and 58.7 s
folded on 2 CPU cores, with the same 237 robust points. Every outcome is still judged by the model
itself (:func:`~robustbench_aft.attacks._base.classified_correctly` on the original), so folding can
change which images an attack finds, never the verdict on an image.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

# The copy is used only if its logits on the probe images match the model's this closely (relative to
# the largest logit, at least 1): folding changes float rounding only, about 1e-6 of the logits.
FOLD_TOLERANCE = 1e-4
PROBE_IMAGES = 8


def _batch_norms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def folded_for_attacks(model: nn.Module, input_shape: Sequence[int], device: torch.device) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every Conv→BatchNorm pair folded into one convolution, or
    ``model`` itself when nothing folds, torch.fx cannot trace it (data-dependent control flow, compiled
    bodies), its outputs are random, or the copy's logits on seeded random images in ``input_shape``
    differ from the model's by more than :data:`FOLD_TOLERANCE`. The probe images do not depend on the
    evaluated points, so a resumed or sharded evaluation decides the same way."""
    if model.training or _batch_norms(model) == 0:
        return model
    from torch.fx.experimental.optimization import fuse

    try:
        folded = fuse(model).eval()
    except Exception as error:  # any model torch.fx cannot trace symbolically runs as it is
        log.debug("attacks run on the model as given (BatchNorm not folded: %s)", " ".join(str(error).split())[:200])
        return model
    if _batch_norms(folded) == _batch_norms(model):
        return model
    generator = torch.Generator().manual_seed(0)
    probe = torch.rand((PROBE_IMAGES, *input_shape), generator=generator).to(device)
    with torch.no_grad():
        reference, again, candidate = model(probe), model(probe), folded(probe)
    if not isinstance(reference, torch.Tensor) or not torch.equal(reference, again):
        return model  # random outputs: nothing to compare the copy against
    scale = max(1.0, float(reference.abs().max()))
    if float((candidate - reference).abs().max()) > FOLD_TOLERANCE * scale:
        log.debug("attacks run on the model as given (the folded copy's logits differ)")
        return model
    return folded
