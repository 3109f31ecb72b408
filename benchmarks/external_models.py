"""Which timm and torchvision models the adapter takes: one row per model, contract checked.

    python benchmarks/external_models.py [--image-size 32]

For each name: build it as ``--arch`` would (randomly initialised, 10 classes, 3×N×N inputs),
check ``forward == head(forward_features)`` on a random batch, take one vAFT step (PGD-10 and an
SGD update, so gradients flow through the adapted network), and say whether every method can
fine-tune it (TWINS needs BatchNorm2d). A model that cannot be adapted prints the one-line reason.
"""
from __future__ import annotations

import argparse
import time

import torch

from robustbench_aft.engine import check_method_fits
from robustbench_aft.errors import UserError
from robustbench_aft.models import build_model
from robustbench_aft.registry import METHODS
from robustbench_aft.tables import format_table

MODELS = [
    "timm:resnet18", "timm:resnet50", "timm:wide_resnet50_2", "timm:efficientnet_b0", "timm:mobilenetv3_small_100",
    "timm:convnext_atto", "timm:regnetx_002", "timm:vit_tiny_patch16_224[img_size={size}]",
    "timm:deit_tiny_patch16_224[img_size={size}]", "timm:swin_tiny_patch4_window7_224",
    "torchvision:resnet18", "torchvision:wide_resnet50_2", "torchvision:mobilenet_v3_small",
    "torchvision:efficientnet_b0", "torchvision:vgg11_bn", "torchvision:densenet121", "torchvision:convnext_tiny",
    "torchvision:shufflenet_v2_x0_5", "torchvision:regnet_x_400mf", "torchvision:vit_b_16[image_size={size}]",
    "torchvision:squeezenet1_0", "torchvision:googlenet",
]


def check(arch: str, size: int) -> dict:
    torch.manual_seed(0)
    start = time.perf_counter()
    try:
        model = build_model(arch, 10, 3, [0.5] * 3, [0.25] * 3, (3, size, size)).eval()
        x = torch.rand(4, 3, size, size)
        with torch.no_grad():
            contract = torch.allclose(model(x), model.head(model.forward_features(x)), atol=1e-5)
        method = METHODS.get("vaft")(eps=8 / 255)
        method.prepare(model)
        method.optimizers = method.configure_optimizers()
        method.train()
        terms = method.update((x, torch.arange(4), torch.arange(4)))
        refusing = []
        for name in METHODS.names():
            try:
                check_method_fits(name, model, arch)
            except UserError:
                refusing.append(name)
        return {"arch": arch, "result": "ok" if contract and torch.isfinite(terms["loss"]) else "contract FAILED",
                "features": model.feature_dim, "params (M)": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                "methods that refuse": ", ".join(refusing) or "-", "seconds": round(time.perf_counter() - start, 1)}
    except (UserError, RuntimeError) as exc:
        return {"arch": arch, "result": "refused: " + " ".join(str(exc).split())[:150], "features": "",
                "params (M)": "", "methods that refuse": "", "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args()
    rows = [check(name.format(size=args.image_size), args.image_size) for name in MODELS]
    print(format_table(rows, "md"))


if __name__ == "__main__":
    main()
