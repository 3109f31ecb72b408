"""``folder:PATH``: any ImageFolder tree with train/ and test/ (or val/)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

from ..data import (IMAGE_EXTENSIONS, DataBundle, DataOptions, IndexedDataset, channel_stats, crop_flip_transform,
                    plain_transform)
from ..errors import ConfigError, DataNotFoundError
from ..registry import DATASETS


def _image_classes(split_dir: Path) -> List[str]:
    """The class sub-folders of ``split_dir``; a split or a class without any image is an error."""
    classes = sorted(entry.name for entry in os.scandir(str(split_dir)) if entry.is_dir())
    if not classes:
        raise DataNotFoundError(f"folder dataset: no class folders with images under {split_dir} "
                                "(expected PATH/train/<class>/*.jpg)")
    for name in classes:
        has_image = any(f.lower().endswith(IMAGE_EXTENSIONS)
                        for _, _, files in os.walk(split_dir / name, followlinks=True) for f in files)
        if not has_image:
            raise DataNotFoundError(f"folder dataset: no images in class folder {split_dir / name} "
                                    f"(extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return classes


@DATASETS.register("folder")
def folder(options: DataOptions) -> DataBundle:
    """Any ImageFolder tree given as folder:PATH, with PATH/train and PATH/test (or PATH/val); eps 8/255.

    Classes are the sorted sub-folder names of train/ (test/ must have the same ones). Images are
    RGB, resized to the size of the first training image; augmentation crop size/8 + flip.
    Normalisation statistics come from a seeded sample of 1,000 training images.
    """
    from PIL import Image
    from torchvision import datasets

    if not options.argument:
        raise ConfigError("dataset 'folder' needs a path: --dataset folder:PATH (PATH holds train/ and test/)")
    root = Path(options.argument).expanduser()
    if not (root / "train").is_dir():
        raise DataNotFoundError(f"folder dataset: {root / 'train'} does not exist (expected PATH/train/<class>/*.jpg)")
    test_dir = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    if test_dir is None:
        raise DataNotFoundError(f"folder dataset: neither {root / 'test'} nor {root / 'val'} exists")
    train_classes, test_classes = _image_classes(root / "train"), _image_classes(test_dir)
    if test_classes != train_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise DataNotFoundError(f"folder dataset: the class folders of {root / 'train'} and {test_dir} differ "
                                f"(only in train: {', '.join(only_train) or '-'}; only in {test_dir.name}: "
                                f"{', '.join(only_test) or '-'})")
    probe = datasets.ImageFolder(str(root / "train"))
    with Image.open(probe.samples[0][0]) as first:
        size = (first.height, first.width)
    train = datasets.ImageFolder(str(root / "train"), transform=crop_flip_transform(size, max(1, size[0] // 8)))
    test = datasets.ImageFolder(str(test_dir), transform=plain_transform(size))
    plain_train = datasets.ImageFolder(str(root / "train"), transform=plain_transform(size))
    mean, std = channel_stats(plain_train, 1000, options.split_seed)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(root.resolve()))[-60:]
    return DataBundle(
        name=f"folder:{options.argument}", key=f"folder-{safe}",
        train=IndexedDataset(train), test=IndexedDataset(test),
        num_classes=len(train.classes), input_shape=(3, *size), mean=mean, std=std,
        default_eps=8 / 255, class_names=list(train.classes),
    )
