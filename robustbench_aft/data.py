"""Registered datasets: images as float tensors in [0, 1] (NCHW), labels, and the example index.

Every dataset builder returns a :class:`DataBundle`; its ``train`` and ``test`` datasets yield
``(image, label, index)`` so that a method can keep per-example state (ATAS). Normalisation is not
done here: it is the first layer of every model (RobustBench convention), so attacks and eps live
in pixel space.

Add a dataset with one decorated builder::

    @DATASETS.register("mydata")
    def mydata(options: DataOptions) -> DataBundle: ...

``folder:PATH`` shows how a builder takes an argument (the text after the colon).
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .errors import ConfigError, DataNotFoundError
from .registry import DATASETS

if TYPE_CHECKING:
    from .distributed import DistContext

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class DataOptions:
    """Where and how to load a dataset.

    Attributes:
        data_dir: root folder for downloadable datasets (``$ROBUSTBENCH_AFT_DATA`` or ``./data``).
        download: let torchvision download a missing dataset (needs network access).
        argument: the text after ``:`` in a spec such as ``folder:PATH``.
        split_seed: seed of the train/test split for datasets that are split here (digits).
    """

    data_dir: str = field(default_factory=lambda: os.environ.get("ROBUSTBENCH_AFT_DATA", "data"))
    download: bool = False
    argument: Optional[str] = None
    split_seed: int = 0


@dataclass
class DataBundle:
    """A dataset ready for training and evaluation.

    Attributes:
        name: the spec it was loaded from (``digits``, ``folder:/x/cifar``).
        key: a short filesystem-safe identifier used in cache file names.
        train: training split with the dataset's augmentation; yields (x, y, index).
        test: test split without augmentation; yields (x, y, index).
        num_classes, input_shape: (C, H, W) of one image.
        mean, std: per-channel statistics for the model's Normalize layer.
        default_eps: the L∞ budget this dataset is evaluated at unless the user sets one.
        class_names: in label order.
        default_val_size: training images held out for validation unless ``--val-size`` says
            otherwise (validation.py).
        user_normalisation: ``mean``/``std`` were given by the user (``--mean``/``--std``); they
            then win over the statistics an external model declares.
    """

    name: str
    key: str
    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: Tuple[int, int, int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    default_eps: float
    class_names: List[str]
    default_val_size: int = 500
    user_normalisation: bool = False


class IndexedDataset(Dataset):
    """Wraps a dataset that yields (x, y) so that it yields (x, y, index)."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        image, label = self.base[index]
        return image, int(label), index


class TensorImageDataset(Dataset):
    """In-memory images (N, C, H, W) in [0, 1] with an optional per-sample tensor transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index]), index


class FileListDataset(Dataset):
    """Images read from a list of (path, label) pairs, e.g. Tiny-ImageNet's val annotations."""

    def __init__(self, samples: Sequence[Tuple[str, int]], transform: Callable) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from PIL import Image

        path, label = self.samples[index]
        with Image.open(path) as image:
            return self.transform(image.convert("RGB")), label


def random_shift(max_shift: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Random translation by up to ``max_shift`` pixels with zero padding (a tensor RandomCrop)."""

    def shift(image: torch.Tensor) -> torch.Tensor:
        padded = torch.nn.functional.pad(image, (max_shift,) * 4)
        dy, dx = torch.randint(0, 2 * max_shift + 1, (2,)).tolist()
        return padded[:, dy:dy + image.shape[1], dx:dx + image.shape[2]]

    return shift


def _crop_flip_transform(size: Tuple[int, int], padding: int):
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(size),
        transforms.RandomCrop(size, padding=padding),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
    ])


def _plain_transform(size: Tuple[int, int]):
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(size), transforms.ToTensor()])


def _no_argument(options: DataOptions, name: str) -> None:
    if options.argument is not None:
        raise ConfigError(f"dataset {name!r} takes no argument (got {name}:{options.argument})")


@DATASETS.register("digits")
def digits(options: DataOptions) -> DataBundle:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), no download; eps 0.15.

    A stratified 80/20 train/test split seeded by ``split_seed``. Pixel values 0..16 are scaled to
    [0, 1]. Training augmentation: a random shift of up to one pixel (no flips: a flipped digit is
    another digit). Default eps 0.15, measured with ``smallcnn``: the natural model keeps 0.8 %
    PGD-20 accuracy there (31.9 % at 0.1), 10 epochs of fine-tuning raise it to 52-72 % with every
    method, while at 0.2 TRADES and MART (β = 6) collapse to near-constant predictions.
    """
    _no_argument(options, "digits")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    raw = load_digits()
    images = torch.tensor(raw.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(raw.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=0.2, stratify=raw.target, random_state=options.split_seed
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    train_images = images[train_idx]
    return DataBundle(
        name="digits",
        key=f"digits-split{options.split_seed}",
        train=TensorImageDataset(train_images, labels[train_idx], transform=random_shift(1)),
        test=TensorImageDataset(images[test_idx], labels[test_idx]),
        num_classes=10,
        input_shape=(1, 8, 8),
        mean=(float(train_images.mean()),),
        std=(float(train_images.std()),),
        default_eps=0.15,
        class_names=[str(d) for d in range(10)],
        default_val_size=200,
    )


def _torchvision_cifar(options: DataOptions, name: str, cls_name: str, folder: str,
                       mean: Tuple[float, ...], std: Tuple[float, ...]) -> DataBundle:
    _no_argument(options, name)
    import torchvision

    root = Path(options.data_dir).expanduser()
    if not options.download and not (root / folder).is_dir():
        raise DataNotFoundError(
            f"{name} not found: looked for {root / folder}; fetch it with "
            f"`bench pretrain --dataset {name} --data-dir {root} --download` (or pass the folder that holds it with --data-dir)"
        )
    cls = getattr(torchvision.datasets, cls_name)
    try:
        train = cls(str(root), train=True, download=options.download, transform=_crop_flip_transform((32, 32), 4))
        test = cls(str(root), train=False, download=options.download, transform=_plain_transform((32, 32)))
    except RuntimeError as exc:
        raise DataNotFoundError(f"{name} in {root} could not be read ({exc}); re-fetch it with --download") from None
    return DataBundle(
        name=name, key=name, train=IndexedDataset(train), test=IndexedDataset(test),
        num_classes=len(train.classes), input_shape=(3, 32, 32), mean=mean, std=std,
        default_eps=8 / 255, class_names=list(train.classes),
    )


@DATASETS.register("cifar10")
def cifar10(options: DataOptions) -> DataBundle:
    """CIFAR-10 through torchvision (--data-dir, --download); crop 4 + flip; eps 8/255."""
    return _torchvision_cifar(options, "cifar10", "CIFAR10", "cifar-10-batches-py",
                              (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))


@DATASETS.register("cifar100")
def cifar100(options: DataOptions) -> DataBundle:
    """CIFAR-100 through torchvision (--data-dir, --download); crop 4 + flip; eps 8/255."""
    return _torchvision_cifar(options, "cifar100", "CIFAR100", "cifar-100-python",
                              (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


def _find_tinyimagenet_root(data_dir: Path) -> Path:
    for candidate in (data_dir / "tiny-imagenet-200", data_dir):
        if (candidate / "wnids.txt").is_file() and (candidate / "train").is_dir():
            return candidate
    raise DataNotFoundError(
        f"tinyimagenet not found: looked for {data_dir / 'tiny-imagenet-200'}/wnids.txt; download "
        "tiny-imagenet-200.zip from the Stanford CS231n site, unzip it into that folder and pass --data-dir "
        f"{data_dir}"
    )


@DATASETS.register("tinyimagenet")
def tinyimagenet(options: DataOptions) -> DataBundle:
    """Tiny-ImageNet (64x64, 200 classes) from the standard extracted tiny-imagenet-200/ layout; eps 8/255.

    Train: train/<wnid>/images/*.JPEG; test: val/images/* labelled by val/val_annotations.txt;
    class order: wnids.txt. Augmentation: crop 8 + flip.
    """
    _no_argument(options, "tinyimagenet")
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
            raise DataNotFoundError(f"tinyimagenet: {annotations}:{line_number} is not '<file>\\t<wnid>\\t...' with a known wnid")
        test_samples.append((str(root / "val" / "images" / parts[0]), label_of[parts[1]]))
    return DataBundle(
        name="tinyimagenet", key="tinyimagenet",
        train=IndexedDataset(FileListDataset(train_samples, _crop_flip_transform((64, 64), 8))),
        test=IndexedDataset(FileListDataset(test_samples, _plain_transform((64, 64)))),
        num_classes=len(wnids), input_shape=(3, 64, 64),
        mean=(0.4802, 0.4481, 0.3975), std=(0.2770, 0.2691, 0.2821),
        default_eps=8 / 255, class_names=wnids,
    )


def _channel_stats(dataset: Dataset, n: int, seed: int) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=generator)[:n].tolist()  # type: ignore[arg-type]
    pixels = torch.stack([dataset[i][0] for i in order])
    return tuple(pixels.mean(dim=(0, 2, 3)).tolist()), tuple(pixels.std(dim=(0, 2, 3)).tolist())


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
    train = datasets.ImageFolder(str(root / "train"), transform=_crop_flip_transform(size, max(1, size[0] // 8)))
    test = datasets.ImageFolder(str(test_dir), transform=_plain_transform(size))
    plain_train = datasets.ImageFolder(str(root / "train"), transform=_plain_transform(size))
    mean, std = _channel_stats(plain_train, 1000, options.split_seed)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(root.resolve()))[-60:]
    return DataBundle(
        name=f"folder:{options.argument}", key=f"folder-{safe}",
        train=IndexedDataset(train), test=IndexedDataset(test),
        num_classes=len(train.classes), input_shape=(3, *size), mean=mean, std=std,
        default_eps=8 / 255, class_names=list(train.classes),
    )


class ResizedDataset(Dataset):
    """Every image of ``dataset`` resized to size × size (bilinear, antialiased), after the split's
    own transform; items stay (x, y, index)."""

    def __init__(self, dataset: Dataset, size: int) -> None:
        self.dataset = dataset
        self.size = size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label, position = self.dataset[index]
        resized = torch.nn.functional.interpolate(image.unsqueeze(0), size=(self.size, self.size), mode="bilinear",
                                                  align_corners=False, antialias=True)
        return resized.squeeze(0).clamp(0.0, 1.0), label, position


@dataclass(frozen=True)
class InputOptions:
    """How the model sees a dataset's images, carried in the dataset spec as ``@`` suffixes so that
    a resized or re-normalised dataset is a dataset of its own everywhere (results, cache keys,
    reports): ``cifar10@224px`` (``--image-size``), ``cifar10@mean=0.5,0.5,0.5@std=0.5,0.5,0.5``
    (``--mean``/``--std``)."""

    image_size: Optional[int] = None
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None

    def suffix(self) -> str:
        parts = []
        if self.image_size is not None:
            parts.append(f"@{self.image_size}px")
        if self.mean is not None:
            parts.append("@mean=" + ",".join(f"{v:g}" for v in self.mean))
        if self.std is not None:
            parts.append("@std=" + ",".join(f"{v:g}" for v in self.std))
        return "".join(parts)


def parse_channel_values(text: str, what: str) -> Tuple[float, ...]:
    """``0.5,0.5,0.5`` → (0.5, 0.5, 0.5); ``what`` names the option in the one-line error."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{what} {text}: give one number per channel, comma-separated (e.g. 0.5,0.5,0.5)") from None
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{what} {text}: every value must be finite")
    if what == "--std" and not all(v > 0 for v in values):
        raise ConfigError(f"--std {text}: every value must be positive")
    return values


def split_input_options(spec: str) -> Tuple[str, InputOptions]:
    """``digits@16px@mean=0.5`` → (``digits``, InputOptions(16, (0.5,), None)); the suffixes are read
    from the right and stop at the first ``@`` part that is not one (a folder name may hold ``@``)."""
    image_size = mean = std = None
    base = spec
    while True:
        head, at, part = base.rpartition("@")
        if not at:
            break
        if part.endswith("px") and part[:-2].isdigit() and image_size is None:
            image_size = int(part[:-2])
            if image_size <= 0:
                raise ConfigError(f"--dataset {spec}: the image size must be positive")
        elif part.startswith("mean=") and mean is None:
            mean = parse_channel_values(part[len("mean="):], "--mean")
        elif part.startswith("std=") and std is None:
            std = parse_channel_values(part[len("std="):], "--std")
        else:
            break
        base = head
    return base, InputOptions(image_size, mean, std)


def with_input_options(spec: str, image_size: Optional[int] = None, mean: Optional[str] = None,
                       std: Optional[str] = None) -> str:
    """``spec`` with the command line's ``--image-size``/``--mean``/``--std`` folded in (each
    replaces the same suffix already in ``spec``)."""
    base, options = split_input_options(spec)
    if image_size is not None and image_size <= 0:
        raise ConfigError(f"--image-size must be positive, got {image_size}")
    merged = InputOptions(image_size if image_size is not None else options.image_size,
                          parse_channel_values(mean, "--mean") if mean is not None else options.mean,
                          parse_channel_values(std, "--std") if std is not None else options.std)
    return base + merged.suffix()


def _per_channel(values: Tuple[float, ...], channels: int, what: str, spec: str) -> Tuple[float, ...]:
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise ConfigError(f"{what} for {spec}: {len(values)} values for {channels} channel(s); give {channels} or one")
    return values


def load_dataset(spec: str, data_dir: Optional[str] = None, download: bool = False, split_seed: int = 0) -> DataBundle:
    """Build the dataset named by ``spec`` (``digits``, ``cifar10``, ``folder:PATH``, ...) with its
    :class:`InputOptions` suffixes: ``@<N>px`` resizes every split to N × N, ``@mean=…``/``@std=…``
    replace the statistics of the model's Normalize layer (``user_normalisation`` is then set)."""
    import dataclasses

    base, options = split_input_options(spec)
    name, _, argument = base.partition(":")
    data_options = DataOptions(download=download, argument=argument or None, split_seed=split_seed)
    if data_dir is not None:
        data_options.data_dir = data_dir
    data = DATASETS.get(name)(data_options)
    if options == InputOptions():
        return data
    changes: Dict[str, Any] = {"name": spec, "key": data.key}
    size = options.image_size
    if size is not None:
        changes["key"] += f"-{size}px"
        if tuple(data.input_shape[1:]) != (size, size):
            changes.update(train=ResizedDataset(data.train, size), test=ResizedDataset(data.test, size),
                           input_shape=(data.input_shape[0], size, size))
    if options.mean is not None or options.std is not None:
        channels = data.input_shape[0]
        changes["mean"] = _per_channel(options.mean, channels, "--mean", spec) if options.mean else data.mean
        changes["std"] = _per_channel(options.std, channels, "--std", spec) if options.std else data.std
        changes["user_normalisation"] = True
        fingerprint = hashlib.sha1(repr((changes["mean"], changes["std"])).encode()).hexdigest()[:8]
        changes["key"] += f"-norm{fingerprint}"
    return dataclasses.replace(data, **changes)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0,
                drop_last: bool = False) -> DataLoader:
    """A DataLoader whose shuffling order is fixed by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=num_workers, drop_last=drop_last,
                      persistent_workers=num_workers > 0)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's shuffling order (distinct for every (seed, epoch) pair in use)."""
    return seed * 1_000_003 + epoch


class EpochOrderSampler(Sampler[int]):
    """A shuffled order that is a pure function of (seed, epoch).

    A run resumed in the middle of an epoch therefore sees the same batches in the same order;
    ``skip`` drops the first examples of the order (the batches already trained on).
    """

    def __init__(self, size: int, seed: int, epoch: int, skip: int = 0) -> None:
        self.size = size
        self.seed = seed
        self.epoch = epoch
        self.skip = skip

    def order(self) -> List[int]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self):
        return iter(self.order()[self.skip:])

    def __len__(self) -> int:
        return max(0, self.size - self.skip)


def make_epoch_loader(dataset: Dataset, batch_size: int, seed: int, epoch: int, skip_batches: int = 0,
                      num_workers: int = 0, dist: Optional["DistContext"] = None,
                      pin_memory: bool = False) -> DataLoader:
    """The training loader of one epoch, starting after ``skip_batches`` batches.

    Worker processes draw their augmentation seeds from a generator of the same (seed, epoch),
    so the epoch is reproducible; a mid-epoch resume is bit-identical with ``num_workers=0``
    (with workers, the augmentations after the resume point differ). Under torchrun (``dist``)
    ``batch_size`` is this process's share and the loader yields its shard of the same order.
    ``pin_memory`` (the engine sets it on CUDA) lets the copies to the GPU run asynchronously.
    """
    if dist is not None and dist.enabled:
        from .distributed import ShardedEpochSampler

        sampler: Sampler[int] = ShardedEpochSampler(len(dataset), epoch_seed(seed, epoch), dist,
                                                    skip=skip_batches * batch_size)
    else:
        sampler = EpochOrderSampler(len(dataset), seed, epoch, skip=skip_batches * batch_size)
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=generator, num_workers=num_workers,
                      pin_memory=pin_memory)


def collect(dataset: Dataset, indices: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack the images and labels at ``indices`` into two tensors."""
    items = [dataset[i] for i in indices]
    return torch.stack([item[0] for item in items]), torch.tensor([item[1] for item in items], dtype=torch.long)
