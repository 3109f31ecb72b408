"""Datasets: the DataBundle contract, loaders and input options; the builders are in ``datasets/``.

Images are float tensors in [0, 1] (NCHW), with labels and the example index. Every dataset
builder returns a :class:`DataBundle`; its ``train`` and ``test`` datasets yield
``(image, label, index)`` so that a method can keep per-example state (ATAS). Normalisation is not
done here: it is the first layer of every model (RobustBench convention), so attacks and eps live
in pixel space.

Add a dataset with one new file in ``robustbench_aft/datasets/`` holding one decorated builder::

    @DATASETS.register("mydata", preset="quick")   # the run preset when none is given (default: paper)
    def mydata(options: DataOptions) -> DataBundle: ...   # its natural recipe: DataBundle.natural_recipe

A builder that also sets ``DataBundle.augmentation`` and ``DataBundle.plain_train`` lets its images
be decoded once into a uint8 tensor cache held on the run's device (:mod:`.tensorcache`), where the
augmentation runs as batched tensor ops; without them the DataLoader path is used.

``folder:PATH`` (``datasets/folder.py``) shows how a builder takes an argument (the text after the colon).
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .errors import ConfigError
from .registry import DATASETS
from .sharding import DistContext, ShardedEpochSampler

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class DataOptions:
    """Where and how to load a dataset.

    Attributes:
        data_dir: root folder for downloadable datasets (``$ROBUSTBENCH_AFT_DATA`` or ``./data``).
        download: let torchvision download a missing dataset (needs network access).
        argument: the text after ``:`` in a spec such as ``folder:PATH``.
        split_seed: seed of the train/test split for datasets that are split here (digits).
        skip_bad_images: leave out the images that cannot be decoded (``folder:``) instead of
            refusing the dataset; how many were left out is in ``DataBundle.metadata``.
    """

    data_dir: str = field(default_factory=lambda: os.environ.get("ROBUSTBENCH_AFT_DATA", "data"))
    download: bool = False
    argument: Optional[str] = None
    split_seed: int = 0
    skip_bad_images: bool = False


@dataclass(frozen=True)
class Augmentation:
    """A training split's augmentation as the tensor cache replays it (:func:`.tensorcache.augment`).

    Attributes:
        shift: a random translation by up to ``shift`` pixels in each direction, the uncovered
            border zero (torchvision's ``RandomCrop(size, padding=shift)``, digits' ``random_shift``).
        flip: then a horizontal flip with probability 1/2 (``RandomHorizontalFlip``).
    """

    shift: int
    flip: bool


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
        default_eps_l2: the L2 budget (``--norm L2``) likewise; 0.5 is CIFAR-10's usual one
            (RobustBench's L2 track), datasets of another resolution measure and set their own.
        class_names: in label order.
        default_val_size: training images held out for validation unless ``--val-size`` says
            otherwise (validation.py).
        user_normalisation: ``mean``/``std`` were given by the user (``--mean``/``--std``); they
            then win over the statistics an external model declares.
        released_corruptions: a folder holding the released corrupted copies of this test set in
            the CIFAR-10-C layout (``<corruption>.npy``: severities 1-5 of every test image in
            order; ``labels.npy``), which the ``corruptions`` attack then reads instead of generating.
        natural_recipe: fields of ``pretrained.NaturalRecipe`` that differ from its defaults (the
            100-epoch "Standard" recipe) for this dataset's natural model.
        metadata: facts about how the data was read that a run's record should keep, e.g.
            ``skipped_bad_images`` (``{"train": 2, "test": 0}``, ``folder:`` with ``skip_bad_images``).
        augmentation: what ``train`` does to an image of ``plain_train`` (None: unknown, so the
            data stays on the DataLoader path).
        plain_train: ``train`` without its augmentation (same images, order and labels). With
            ``augmentation`` it makes the bundle cacheable (:mod:`.tensorcache`): every image must then
            be integers divided by ``pixel_divisor`` exactly, as ``ToTensor`` gives (x / 255).
        pixel_divisor: the integer that pixel values are multiples of the reciprocal of (255 for
            8-bit images; digits: 16).
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
    default_eps_l2: float = 0.5
    user_normalisation: bool = False
    released_corruptions: Optional[str] = None
    natural_recipe: Dict[str, Any] = field(default_factory=dict)
    metadata: Dict[str, Any] = field(default_factory=dict)
    augmentation: Optional[Augmentation] = None
    plain_train: Optional[Dataset] = None
    pixel_divisor: int = 255


def default_eps(data: DataBundle, norm: str) -> float:
    """The budget ``data`` is evaluated at in ``norm`` unless the user gives ``--eps``."""
    return data.default_eps_l2 if norm == "L2" else data.default_eps


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


def crop_flip_transform(size: Tuple[int, int], padding: int):
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(size),
        transforms.RandomCrop(size, padding=padding),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
    ])


def plain_transform(size: Tuple[int, int]):
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(size), transforms.ToTensor()])


def no_argument(options: DataOptions, name: str) -> None:
    if options.argument is not None:
        raise ConfigError(f"dataset {name!r} takes no argument (got {name}:{options.argument})")


def channel_stats(dataset: Dataset, n: int, seed: int) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and std of a seeded sample of ``n`` images (for Normalize)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=generator)[:n].tolist()  # type: ignore[arg-type]
    pixels = torch.stack([dataset[i][0] for i in order])
    return tuple(pixels.mean(dim=(0, 2, 3)).tolist()), tuple(pixels.std(dim=(0, 2, 3)).tolist())


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


def default_preset(spec: str) -> str:
    """The run preset of a dataset spec when none is given: its registration's ``preset`` (digits:
    ``quick``), else ``paper``."""
    kind = split_input_options(spec)[0].partition(":")[0]
    return DATASETS.entry(kind).metadata.get("preset", "paper") if kind in DATASETS else "paper"


def load_dataset(spec: str, data_dir: Optional[str] = None, download: bool = False, split_seed: int = 0,
                 skip_bad_images: bool = False) -> DataBundle:
    """Build the dataset named by ``spec`` (``digits``, ``cifar10``, ``folder:PATH``, ...) with its
    :class:`InputOptions` suffixes: ``@<N>px`` resizes every split to N × N, ``@mean=…``/``@std=…``
    replace the statistics of the model's Normalize layer (``user_normalisation`` is then set).
    ``skip_bad_images``: see :class:`DataOptions`."""
    import dataclasses

    base, options = split_input_options(spec)
    name, _, argument = base.partition(":")
    data_options = DataOptions(download=download, argument=argument or None, split_seed=split_seed,
                               skip_bad_images=skip_bad_images)
    if data_dir is not None:
        data_options.data_dir = data_dir
    data = DATASETS.get(name)(data_options)
    if data.num_classes < 2:
        # One class makes every prediction right: 100 % clean and robust accuracy that mean nothing.
        raise ConfigError(f"dataset {spec} has {data.num_classes} class(es) ({', '.join(data.class_names) or '-'}); "
                          "a classifier needs at least two")
    if options == InputOptions():
        return data
    changes: Dict[str, Any] = {"name": spec, "key": data.key}
    size = options.image_size
    if size is not None:
        changes["key"] += f"-{size}px"
        if tuple(data.input_shape[1:]) != (size, size):
            # Interpolated pixels are no longer multiples of 1/255: the resized bundle is not cacheable.
            changes.update(train=ResizedDataset(data.train, size), test=ResizedDataset(data.test, size),
                           input_shape=(data.input_shape[0], size, size), augmentation=None, plain_train=None)
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


def epoch_sampler(size: int, batch_size: int, seed: int, epoch: int, skip_batches: int = 0,
                  dist: Optional[DistContext] = None) -> Sampler[int]:
    """The positions of one epoch's examples in training order (this rank's shard under torchrun),
    after the first ``skip_batches`` batches: a pure function of (seed, epoch)."""
    if dist is not None and dist.enabled:
        return ShardedEpochSampler(size, epoch_seed(seed, epoch), dist, skip=skip_batches * batch_size)
    return EpochOrderSampler(size, seed, epoch, skip=skip_batches * batch_size)


def make_epoch_loader(dataset: Dataset, batch_size: int, seed: int, epoch: int, skip_batches: int = 0,
                      num_workers: int = 0, dist: Optional[DistContext] = None,
                      pin_memory: bool = False) -> DataLoader:
    """The training loader of one epoch, starting after ``skip_batches`` batches.

    Worker processes draw their augmentation seeds from a generator of the same (seed, epoch),
    so the epoch is reproducible; a mid-epoch resume is bit-identical with ``num_workers=0``
    (with workers, the augmentations after the resume point differ). Under torchrun (``dist``)
    ``batch_size`` is this process's share and the loader yields its shard of the same order.
    ``pin_memory`` (the engine sets it on CUDA) lets the copies to the GPU run asynchronously.
    """
    sampler = epoch_sampler(len(dataset), batch_size, seed, epoch, skip_batches, dist)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=generator, num_workers=num_workers,
                      pin_memory=pin_memory)


def collect(dataset: Dataset, indices: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack the images and labels at ``indices`` into two tensors."""
    items = [dataset[i] for i in indices]
    return torch.stack([item[0] for item in items]), torch.tensor([item[1] for item in items], dtype=torch.long)
