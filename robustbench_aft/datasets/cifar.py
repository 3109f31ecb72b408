"""CIFAR-10 and CIFAR-100 through torchvision (``--data-dir``, ``--download``)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Tuple

from ..data import (
    Augmentation,
    DataBundle,
    DataOptions,
    IndexedDataset,
    crop_flip_transform,
    no_argument,
    plain_transform,
)
from ..errors import DataNotFoundError
from ..registry import DATASETS


def _torchvision_cifar(options: DataOptions, name: str, cls_name: str, folder: str,
                       mean: Tuple[float, ...], std: Tuple[float, ...], corrupted: str) -> DataBundle:
    no_argument(options, name)
    import torchvision

    root = Path(options.data_dir).expanduser()
    if not options.download and not (root / folder).is_dir():
        raise DataNotFoundError(
            f"{name} not found: looked for {root / folder}; fetch it with "
            f"`bench pretrain --dataset {name} --data-dir {root} --download` (or pass the folder that holds it "
            "with --data-dir)"
        )
    cls = getattr(torchvision.datasets, cls_name)
    try:
        train = cls(str(root), train=True, download=options.download, transform=crop_flip_transform((32, 32), 4))
        test = cls(str(root), train=False, download=options.download, transform=plain_transform((32, 32)))
    except RuntimeError as exc:
        raise DataNotFoundError(f"{name} in {root} could not be read ({exc}); re-fetch it with --download") from None
    plain_train = copy.copy(train)  # shares the decoded arrays; only the transform differs
    plain_train.transform = plain_transform((32, 32))
    return DataBundle(
        name=name, key=name, train=IndexedDataset(train), test=IndexedDataset(test),
        num_classes=len(train.classes), input_shape=(3, 32, 32), mean=mean, std=std,
        default_eps=8 / 255, class_names=list(train.classes),
        released_corruptions=str(root / corrupted) if (root / corrupted / "labels.npy").is_file() else None,
        augmentation=Augmentation(shift=4, flip=True), plain_train=IndexedDataset(plain_train),
    )


@DATASETS.register("cifar10", input_shape=(3, 32, 32))
def cifar10(options: DataOptions) -> DataBundle:
    """CIFAR-10 through torchvision (--data-dir, --download); crop 4 + flip; eps 8/255. The
    ``corruptions`` attack reads the released CIFAR-10-C when ``--data-dir`` holds ``CIFAR-10-C/``."""
    return _torchvision_cifar(options, "cifar10", "CIFAR10", "cifar-10-batches-py",
                              (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), "CIFAR-10-C")


@DATASETS.register("cifar100", input_shape=(3, 32, 32))
def cifar100(options: DataOptions) -> DataBundle:
    """CIFAR-100 through torchvision (--data-dir, --download); crop 4 + flip; eps 8/255."""
    return _torchvision_cifar(options, "cifar100", "CIFAR100", "cifar-100-python",
                              (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "CIFAR-100-C")
