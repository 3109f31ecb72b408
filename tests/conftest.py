"""Shared fixtures: an isolated cache, the digits data and one naturally trained digits model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from robustbench_aft import load_dataset
from robustbench_aft.pretrained import resolve
from robustbench_aft.signals import StopSignal

CPU = torch.device("cpu")
SHARED_CIFAR10_JPEG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg"


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """Never touch the user's ~/.cache during tests."""
    previous = os.environ.get("ROBUSTBENCH_AFT_CACHE")
    os.environ["ROBUSTBENCH_AFT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    # OMP_NUM_THREADS, when set, wins: a background measurement may be using the other core.
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or max(1, min(2, os.cpu_count() or 1)))
    yield
    if previous is None:
        os.environ.pop("ROBUSTBENCH_AFT_CACHE", None)
    else:
        os.environ["ROBUSTBENCH_AFT_CACHE"] = previous


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def digits_natural(digits):
    """The natural model `bench run` uses on digits (default recipe, 30 epochs, seed 0), put into the
    session's cache once, so that no test that runs `bench run` pays for it again."""
    return resolve("auto", digits, "smallcnn", seed=0, device=CPU, progress=False)


@pytest.fixture(scope="session")
def digits_model(digits_natural):
    """That model in eval mode: the naturally trained smallcnn of the unit tests."""
    model, info = digits_natural
    assert info["metadata"]["test_accuracy"] > 95.0
    return model.eval()


@pytest.fixture
def cifar10_jpeg_root():
    if not (SHARED_CIFAR10_JPEG / "train").is_dir():
        pytest.skip(f"CIFAR-10 (JPEG q75) copy not found at {SHARED_CIFAR10_JPEG}")
    return SHARED_CIFAR10_JPEG


def write_tiny_imagenet(root: Path, wnids=("n01443537", "n01629819", "n01641577"), per_class: int = 3,
                        val_per_class: int = 2) -> Path:
    """A miniature tiny-imagenet-200/ tree in the standard layout, with distinct solid-colour images."""
    from PIL import Image

    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines = []
    for label, wnid in enumerate(wnids):
        image_dir = base / "train" / wnid / "images"
        image_dir.mkdir(parents=True)
        colour = (80 * label, 255 - 80 * label, 40)
        for i in range(per_class):
            Image.new("RGB", (64, 64), colour).save(image_dir / f"{wnid}_{i}.JPEG")
        for i in range(val_per_class):
            name = f"val_{label}_{i}.JPEG"
            Image.new("RGB", (64, 64), colour).save(base / "val" / "images" / name)
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return base


def write_image_folder(root: Path, classes: int = 3, train_per_class: int = 12, test_per_class: int = 4,
                       size: int = 32) -> Path:
    """A miniature ImageFolder tree (train/ and test/) of size × size images whose colour encodes the class."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label in range(classes):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                noise = torch.randint(0, 40, (size, size, 3), generator=generator)
                pixels = (noise + torch.tensor([90 * label, 200 - 90 * label, 60])).clamp(0, 255).to(torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    return root


class StopAfter(StopSignal):
    """A StopSignal that "receives" SIGINT when the engine has finished ``batches`` batches."""

    def __init__(self, batches: int) -> None:
        super().__init__()
        self.left = batches

    @property
    def requested(self) -> bool:
        self.left -= 1
        if self.left == 0:
            import signal

            self.signum = signal.SIGINT
        return self.signum is not None
