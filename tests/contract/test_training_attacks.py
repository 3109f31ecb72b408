"""Every registered method's training inputs stay inside the run's ball, in L∞ and in L2: what the
networks see during one update is the clean batch plus a perturbation of size at most the method's
training eps in the run's norm (and the attacks do perturb)."""
import pytest
import torch

from robustbench_aft.data import collect
from robustbench_aft.models import Normalize
from robustbench_aft.registry import METHODS

# L2 1.0 on 8×8 digits: an L∞ attack of that size would be ~8 in L2, so the bound tells the norms apart.
BUDGETS = [("Linf", 0.15), ("L2", 1.0)]
BATCH = 8


def _size(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().max(dim=1).values if norm == "Linf" else flat.norm(dim=1)


@pytest.mark.parametrize("name", METHODS.names())
@pytest.mark.parametrize("norm,eps", BUDGETS)
def test_training_inputs_stay_in_the_ball_of_the_runs_norm(name, norm, eps, digits_model, digits):
    torch.manual_seed(0)
    x, y = collect(digits.train, range(BATCH))
    method = METHODS.get(name)(eps=eps, norm=norm)
    method.prepare(digits_model)
    method.optimizers = method.configure_optimizers()
    method.on_fit_start(digits.train)
    method.on_epoch_start(1, 20)
    method.train()
    seen = []
    hooks = [module.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
             for module in method.modules() if isinstance(module, Normalize)]
    try:
        method.update((x, y, torch.arange(BATCH)))
    finally:
        for hook in hooks:
            hook.remove()
    batches = [images for images in seen if images.shape == x.shape]
    assert batches, "no network saw the training batch"
    training_eps = getattr(method.params, "attack_eps_ratio", 1.0) * eps
    sizes = torch.stack([_size(images - x, norm) for images in batches])
    assert sizes.max() <= max(training_eps, eps) + 1e-5
    assert sizes.max() > 0.5 * training_eps  # an attack (or its noise) did perturb
