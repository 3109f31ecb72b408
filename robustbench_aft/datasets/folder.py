"""``folder:PATH``: any ImageFolder tree with train/ and test/ (or val/)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..data import (
    IMAGE_EXTENSIONS,
    Augmentation,
    DataBundle,
    DataOptions,
    IndexedDataset,
    channel_stats,
    crop_flip_transform,
    plain_transform,
)
from ..errors import ConfigError, DataNotFoundError
from ..registry import DATASETS

log = logging.getLogger(__name__)


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


def _why_unreadable(path: str) -> Optional[str]:
    """Why Pillow cannot decode the image at ``path`` (a short reason), or None when it can.

    The whole file is decoded, not only its header: a truncated JPEG opens fine and fails in the
    middle of training. ``draft`` lets a JPEG decode at 1/8 scale, which still reads every byte, so
    scanning a large tree costs a fraction of a full decode.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.draft("RGB", (1, 1))
            image.load()
    except UnidentifiedImageError:
        return "not an image file Pillow can identify"
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        return " ".join(str(exc).split())[:120] or type(exc).__name__
    return None


# A folder's scan is kept between processes: the path, size and mtime of every image with Pillow's
# verdict, so a later run (or `bench eval`) decodes only the files that changed.
SCAN_FORMAT = "robustbench_aft.scan/1"
Verdicts = Dict[str, Tuple[int, int, Optional[str]]]  # path -> (size, mtime_ns, reason or None)


def scan_record(root: Path) -> Path:
    """Where the scan of the tree at ``root`` is kept: ``<cache>/scans/<digest of its path>.json``."""
    from ..files import cache_dir

    return cache_dir() / "scans" / f"{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]}.json"


def _read_record(path: Path) -> Verdicts:
    """The verdicts kept at ``path``; none when it is missing, unreadable or of another format."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("format") != SCAN_FORMAT:
            return {}
        return {name: (int(size), int(mtime), reason) for name, (size, mtime, reason) in payload["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _verdict(path: str, known: Verdicts) -> Tuple[str, Tuple[int, int, Optional[str]]]:
    try:
        info = os.stat(path)
    except OSError as exc:
        return path, (-1, -1, f"cannot be read ({exc.strerror})")
    entry = known.get(path)
    if entry is not None and entry[:2] == (info.st_size, info.st_mtime_ns):
        return path, entry
    return path, (info.st_size, info.st_mtime_ns, _why_unreadable(path))


def _scan(splits: Sequence[Tuple[str, Sequence[Tuple[str, int]]]], record: Path) -> Dict[str, List[Tuple[str, str]]]:
    """Every image of every split decoded once: {split: [(path, reason), ...]} of the bad ones.

    An image whose path, size and mtime are in ``record`` keeps its verdict without a decode; the
    record is rewritten when any image was decoded (a cache that cannot be written only costs the
    next load its decode). Threads when this process may use several cores, because Pillow's decoders
    release the GIL: CIFAR-10's 60,000 JPEGs take about 0.2 ms each (12 s on one core); on one core
    the pool only adds overhead.
    """
    from concurrent.futures import ThreadPoolExecutor

    from ..files import atomic_write_text

    known = _read_record(record)
    paths = [[path for path, _ in samples] for _, samples in splits]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores > 1 and sum(map(len, paths)) > 256:
        with ThreadPoolExecutor(max_workers=min(8, cores)) as pool:
            verdicts = [dict(pool.map(lambda path: _verdict(path, known), split_paths)) for split_paths in paths]
    else:
        verdicts = [dict(_verdict(path, known) for path in split_paths) for split_paths in paths]
    scanned = {path: entry for split in verdicts for path, entry in split.items()}
    if any(known.get(path) != entry for path, entry in scanned.items()):
        try:
            atomic_write_text(json.dumps({"format": SCAN_FORMAT, "files": scanned}), record)
        except OSError as exc:
            log.debug("could not keep the scan of the image folder at %s: %s", record, exc)
    return {split: [(path, split_verdicts[path][2]) for path in split_paths if split_verdicts[path][2]]
            for (split, _), split_paths, split_verdicts in zip(splits, paths, verdicts)}


def _leave_out(dataset: Any, bad: set) -> None:
    """Drop the ``bad`` paths from an ImageFolder (its samples, imgs and targets stay in step)."""
    dataset.samples = [(path, label) for path, label in dataset.samples if path not in bad]
    dataset.imgs = dataset.samples
    dataset.targets = [label for _, label in dataset.samples]


def _refuse_one_class(split_dir: Path, classes: Sequence[str], after: str = "") -> None:
    if len(classes) < 2:
        # One class makes every prediction right: 100 % clean and robust accuracy that mean nothing.
        raise ConfigError(f"folder dataset: {split_dir} has {len(classes)} class folder(s) with images{after} "
                          f"({', '.join(classes) or '-'}); a classifier needs at least two "
                          "(PATH/train/<class>/*.jpg, one folder per class)")


@DATASETS.register("folder")
def folder(options: DataOptions) -> DataBundle:
    """Any ImageFolder tree given as folder:PATH, with PATH/train and PATH/test (or PATH/val); eps 8/255.

    Classes are the sorted sub-folder names of train/ (test/ must have the same ones; at least two).
    Images are RGB, resized to the size of the first training image; augmentation crop size/8 + flip.
    Normalisation statistics come from a seeded sample of 1,000 training images. Every image is
    decoded once up front: one that cannot be is an error naming it (and counting the others),
    unless ``options.skip_bad_images``, which leaves them out and counts them in
    ``metadata["skipped_bad_images"]`` (per split).
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
    _refuse_one_class(root / "train", train_classes)
    train = datasets.ImageFolder(str(root / "train"))
    test = datasets.ImageFolder(str(test_dir))
    # Scanned before anything reads an image, so that a bad file is one line naming it, not a PIL
    # traceback from a DataLoader worker in the middle of pre-training.
    bad = _scan([("train", train.samples), ("test", test.samples)], scan_record(root))
    bad_paths = {path for found in bad.values() for path, _ in found}
    if bad_paths and not options.skip_bad_images:
        path, reason = next(item for found in bad.values() for item in found)
        others = len(bad_paths) - 1
        also = (f"; {others} other image{'s' if others > 1 else ''} under {root} "
                f"{'are' if others > 1 else 'is'} bad too" if others else "")
        raise ConfigError(f"folder dataset: cannot read {path} ({reason}){also}; fix or remove "
                          f"{'them' if others else 'it'}, or pass --skip-bad-images to leave "
                          f"{'them' if others else 'it'} out")
    if bad_paths:
        for split_dataset, split_dir in ((train, root / "train"), (test, test_dir)):
            _leave_out(split_dataset, bad_paths)
            present = sorted({split_dataset.classes[label] for label in split_dataset.targets})
            _refuse_one_class(split_dir, present, after=f" left after skipping {len(bad_paths)} bad image(s)")
        log.warning("folder dataset: left out %d image(s) that cannot be read (%d in train, %d in %s), e.g. %s",
                    len(bad_paths), len(bad["train"]), len(bad["test"]), test_dir.name,
                    (bad["train"] or bad["test"])[0][0])
    with Image.open(train.samples[0][0]) as first:
        size = (first.height, first.width)
    padding = max(1, size[0] // 8)
    train.transform = crop_flip_transform(size, padding)
    test.transform = plain_transform(size)
    plain_train = datasets.ImageFolder(str(root / "train"), transform=plain_transform(size))
    _leave_out(plain_train, bad_paths)
    mean, std = channel_stats(plain_train, 1000, options.split_seed)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(root.resolve()))[-60:]
    return DataBundle(
        name=f"folder:{options.argument}", key=f"folder-{safe}",
        train=IndexedDataset(train), test=IndexedDataset(test),
        num_classes=len(train.classes), input_shape=(3, *size), mean=mean, std=std,
        default_eps=8 / 255, class_names=list(train.classes),
        metadata={"skipped_bad_images": {split: len(found) for split, found in bad.items()}},
        augmentation=Augmentation(shift=padding, flip=True), plain_train=IndexedDataset(plain_train),
    )
