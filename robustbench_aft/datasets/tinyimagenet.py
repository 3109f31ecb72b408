"""Tiny-ImageNet (64×64, 200 classes) from its standard extracted layout."""
from __future__ import annotations

from pathlib import Path

from ..data import (
    IMAGE_EXTENSIONS,
    Augmentation,
    DataBundle,
    DataOptions,
    FileListDataset,
    IndexedDataset,
    crop_flip_transform,
    no_argument,
    plain_transform,
)
from ..errors import DataNotFoundError
from ..registry import DATASETS


def _find_tinyimagenet_root(data_dir: Path) -> Path:
    for candidate in (data_dir / "tiny-imagenet-200", data_dir):
        if (candidate / "wnids.txt").is_file() and (candidate / "train").is_dir():
            return candidate
    raise DataNotFoundError(
        f"tinyimagenet not found: looked for {data_dir / 'tiny-imagenet-200'}/wnids.txt; download "
        "tiny-imagenet-200.zip from the Stanford CS231n site, unzip it into that folder and pass --data-dir "
        f"{data_dir}"
    )


@DATASETS.register("tinyimagenet", input_shape=(3, 64, 64))
def tinyimagenet(options: DataOptions) -> DataBundle:
    """Tiny-ImageNet (64x64, 200 classes) from the standard extracted tiny-imagenet-200/ layout; eps 8/255.

    Train: train/<wnid>/images/*.JPEG; test: val/images/* labelled by val/val_annotations.txt;
    class order: wnids.txt. Augmentation: crop 8 + flip.
    """
    no_argument(options, "tinyimagenet")
    root = _find_tinyimagenet_root(Path(options.data_dir).expanduser())
    wnids = [line.strip() for line in (root / "wnids.txt").read_text().splitlines() if line.strip()]
    label_of = {wnid: i for i, wnid in enumerate(wnids)}
    train_samples = []
    for wnid in wnids:
        image_dir = root / "train" / wnid / "images"
        if not image_dir.is_dir():
            raise DataNotFoundError(f"tinyimagenet: missing {image_dir} (class listed in {root / 'wnids.txt'})")
        train_samples += [(str(p), label_of[wnid]) for p in sorted(image_dir.iterdir())
                          if p.suffix.lower() in IMAGE_EXTENSIONS]
    annotations = root / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise DataNotFoundError(f"tinyimagenet: missing {annotations}")
    test_samples = []
    for line_number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in label_of:
            raise DataNotFoundError(f"tinyimagenet: {annotations}:{line_number} is not '<file>\\t<wnid>\\t...' "
                                    "with a known wnid")
        test_samples.append((str(root / "val" / "images" / parts[0]), label_of[parts[1]]))
    return DataBundle(
        name="tinyimagenet", key="tinyimagenet",
        train=IndexedDataset(FileListDataset(train_samples, crop_flip_transform((64, 64), 8))),
        test=IndexedDataset(FileListDataset(test_samples, plain_transform((64, 64)))),
        num_classes=len(wnids), input_shape=(3, 64, 64),
        mean=(0.4802, 0.4481, 0.3975), std=(0.2770, 0.2691, 0.2821),
        default_eps=8 / 255, class_names=wnids,
        augmentation=Augmentation(shift=8, flip=True),
        plain_train=IndexedDataset(FileListDataset(train_samples, plain_transform((64, 64)))),
    )
