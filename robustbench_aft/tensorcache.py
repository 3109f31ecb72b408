"""Device-resident data: every image decoded once into a uint8 tensor cache, augmented in batches.

A cacheable :class:`~robustbench_aft.data.DataBundle` (one with ``augmentation`` and
``plain_train``) has both splits decoded once into ``N×C×H×W`` uint8 tensors with their labels,
written atomically to ``<cache>/data/<key>-<digest>.pt`` (``<cache>``: ``$ROBUSTBENCH_AFT_CACHE``,
as the natural models), where later runs and processes read it. The digest covers the dataset's
fingerprint (identity, sizes, labels) and its source (every file's path, size and mtime; the
in-memory arrays' bytes), so an edited folder gets a new cache; a cache that is stale or cannot be
read is rebuilt with a log line.

When both splits together fit :func:`device_bytes_limit` (2 GiB unless
``$ROBUSTBENCH_AFT_DEVICE_DATA_GIB`` says otherwise; 0 turns the cache off) the cache is held on the
run's device and a training batch is a gather, the augmentation (:func:`augment`) and one division,
all on the device. The batch order is the DataLoader path's (:func:`~robustbench_aft.data.epoch_sampler`);
each batch's augmentation draws from a generator seeded by (seed, epoch, batch, rank), so an epoch is a
pure function of those and a resume inside it is bit-identical. Pixels are ``uint8 / pixel_divisor``
with the same division as ``ToTensor``, so the images are bit-identical to the ones the datasets yield.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .data import Augmentation, DataBundle, epoch_sampler
from .files import atomic_torch_save
from .sharding import DistContext

log = logging.getLogger(__name__)

CACHE_FORMAT = "robustbench_aft.tensorcache/1"
DEFAULT_DEVICE_DATA_GIB = 2.0
DEVICE_DATA_ENV = "ROBUSTBENCH_AFT_DEVICE_DATA_GIB"
_BUILD_CHUNK = 512


def device_bytes_limit() -> int:
    """The largest cache (both splits, uint8) held on a run's device: ``$ROBUSTBENCH_AFT_DEVICE_DATA_GIB``
    GiB, default 2; 0 keeps every dataset on the DataLoader path."""
    text = os.environ.get(DEVICE_DATA_ENV, "")
    try:
        gib = float(text) if text.strip() else DEFAULT_DEVICE_DATA_GIB
    except ValueError:
        from .errors import ConfigError

        raise ConfigError(f"${DEVICE_DATA_ENV}={text!r}: give a number of GiB (0 turns the tensor cache off)") from None
    return max(0, int(gib * 1024 ** 3))


def cacheable(data: DataBundle) -> bool:
    """Whether the bundle says what its augmentation is and has the images without it."""
    return data.augmentation is not None and data.plain_train is not None


def cache_bytes(data: DataBundle) -> int:
    """The size of the bundle's cache in bytes (uint8 images of both splits)."""
    return (len(data.train) + len(data.test)) * math.prod(data.input_shape)  # type: ignore[arg-type]


@dataclass
class TensorCache:
    """Both splits of a dataset as uint8 tensors (N, C, H, W) and int64 labels, on one device.

    An image is ``images[i].float() / divisor``, bit for bit what the dataset yields."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    divisor: int
    augmentation: Augmentation

    @property
    def device(self) -> torch.device:
        return self.train_images.device

    def to(self, device: torch.device) -> "TensorCache":
        return TensorCache(self.train_images.to(device), self.train_labels.to(device), self.test_images.to(device),
                           self.test_labels.to(device), self.divisor, self.augmentation)

    def split(self, name: str) -> "CachedSplit":
        """The ``train`` (without augmentation) or ``test`` split as a Dataset of (x, y, index)."""
        if name == "train":
            return CachedSplit(self.train_images, self.train_labels, self.divisor)
        return CachedSplit(self.test_images, self.test_labels, self.divisor)


def to_float(images: torch.Tensor, divisor: int) -> torch.Tensor:
    """uint8 → float32 in [0, 1]: ``ToTensor``'s conversion (``.to(float32).div(255)``), batched."""
    return images.to(torch.float32).div(divisor)


class CachedSplit(Dataset):
    """A cached split as a Dataset: ``(images[i] / divisor, label, i)``, like the dataset's own split."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, divisor: int) -> None:
        self.images = images
        self.labels = labels
        self.divisor = divisor

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int, int]:
        return to_float(self.images[index], self.divisor), int(self.labels[index]), index

    def collect(self, indices: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """The images and labels at ``indices``, as :func:`~robustbench_aft.data.collect` stacks them."""
        positions = torch.as_tensor(list(indices), dtype=torch.long, device=self.images.device)
        return to_float(self.images[positions], self.divisor), self.labels[positions]


def augment(images: torch.Tensor, augmentation: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """A batch (N, C, H, W) through ``augmentation``: each image translated by (dy, dx), both drawn
    uniformly from [-shift, shift], the uncovered border zero (RandomCrop of the zero-padded image),
    then flipped left-right with probability 1/2 when ``augmentation.flip``. One gather, any dtype;
    the draws come from ``generator`` (on the images' device): dy, dx, then the flips."""
    n, channels, height, width = images.shape
    shift = augmentation.shift
    device = images.device
    padded = torch.nn.functional.pad(images, (shift,) * 4) if shift else images
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=generator, device=device)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=generator, device=device)
    rows = dy[:, None] + torch.arange(height, device=device)
    columns = torch.arange(width, device=device)
    cols = dx[:, None] + columns
    if augmentation.flip:
        flipped = torch.rand(n, generator=generator, device=device) < 0.5
        # The flip of the crop at dx reads the padded row backwards from dx + width - 1.
        cols = torch.where(flipped[:, None], dx[:, None] + (width - 1 - columns), cols)
    batch = torch.arange(n, device=device)[:, None, None, None]
    channel = torch.arange(channels, device=device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def batch_seed(seed: int, epoch: int, batch_number: int, rank: int = 0) -> int:
    """The augmentation seed of one batch: a hash of (seed, epoch, batch number, rank), 63 bits."""
    text = f"augment/{seed}/{epoch}/{batch_number}/{rank}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)


class DeviceEpoch:
    """One epoch of training batches (x, y, index) from a cache on the device, after ``skip_batches``.

    The order is the DataLoader path's (the same sampler), over ``positions`` (the fine-tuning subset's
    indices into the training split; None: all of it), so ``index`` is the training-split index."""

    def __init__(self, cache: TensorCache, positions: Optional[Sequence[int]], batch_size: int, seed: int,
                 epoch: int, skip_batches: int = 0, dist: Optional[DistContext] = None) -> None:
        size = len(positions) if positions is not None else cache.train_images.shape[0]
        order = torch.as_tensor(list(epoch_sampler(size, batch_size, seed, epoch, skip_batches, dist)),
                                dtype=torch.long)
        if positions is not None:
            order = torch.as_tensor(list(positions), dtype=torch.long)[order]
        self.cache = cache
        self.order = order.to(cache.device)
        self.batch_size = batch_size
        self.seed, self.epoch, self.skip = seed, epoch, skip_batches
        self.rank = dist.rank if dist is not None else 0
        self.generator = torch.Generator(device=cache.device)

    def __len__(self) -> int:
        return -(-self.order.shape[0] // self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        cache = self.cache
        for offset in range(len(self)):
            index = self.order[offset * self.batch_size:(offset + 1) * self.batch_size]
            self.generator.manual_seed(batch_seed(self.seed, self.epoch, self.skip + offset + 1, self.rank))
            images = augment(cache.train_images[index], cache.augmentation, self.generator)
            yield to_float(images, cache.divisor), cache.train_labels[index], index


def shuffled_batches(cache: TensorCache, batch_size: int, seed: int, epoch: int) -> DeviceEpoch:
    """Natural pre-training's epoch ``epoch`` (0-based) over the whole training split."""
    return DeviceEpoch(cache, None, batch_size, seed, epoch)


# id(bundle) -> (a weak reference to it, {device: cache or None}): a bundle is decoded or read once
# per process, and its tensors go when it does.
_LOADED: Dict[int, Tuple["weakref.ref[DataBundle]", Dict[str, Optional[TensorCache]]]] = {}


def tensor_cache(data: DataBundle, device: Optional[torch.device] = None,
                 progress: bool = True) -> Optional[TensorCache]:
    """The bundle's cache on ``device`` (CPU when None), read from disk or built there; None when the
    bundle is not cacheable or the cache would exceed :func:`device_bytes_limit`."""
    if not cacheable(data) or cache_bytes(data) > device_bytes_limit():
        return None
    known = _LOADED.get(id(data))
    if known is None or known[0]() is not data:
        known = (weakref.ref(data), {})
        _LOADED[id(data)] = known
        weakref.finalize(data, _LOADED.pop, id(data), None)
    by_device = known[1]
    if "cpu" not in by_device:
        by_device["cpu"] = _read_or_build(data, progress)
    on_cpu = by_device["cpu"]
    target = torch.device(device) if device is not None else torch.device("cpu")
    name = str(target)
    if name not in by_device:
        by_device[name] = on_cpu.to(target) if on_cpu is not None else None
    return by_device[name]


def evaluation_split(data: DataBundle, name: str = "test") -> Dataset:
    """The split evaluation reads: the cached one where there is a cache (same pixels, no decoding),
    else the dataset's own (``test``; ``train`` means ``plain_train``)."""
    cache = tensor_cache(data)
    if cache is not None:
        return cache.split(name)
    return data.test if name == "test" else (data.plain_train or data.train)


def cache_file(data: DataBundle) -> Path:
    """Where the bundle's cache lives: ``<cache>/data/<key>-<digest of fingerprint and source>.pt``."""
    from .files import cache_dir
    from .protocol import dataset_fingerprint, digest

    key = digest({"format": CACHE_FORMAT, "fingerprint": dataset_fingerprint(data), "divisor": data.pixel_divisor,
                  "train": _source_signature(data.plain_train), "test": _source_signature(data.test)})
    return cache_dir() / "data" / f"{data.key}-{key}.pt"


def _source_signature(dataset: Any) -> Optional[str]:
    """What the split's images are read from, hashed: every file's (path, size, mtime) for file lists
    (ImageFolder, Tiny-ImageNet), the bytes of an in-memory array (torchvision CIFAR, digits); None
    when neither is found (the fingerprint alone then keys the cache)."""
    for _ in range(8):  # through IndexedDataset(.base) / Subset(.dataset) wrappers
        samples = getattr(dataset, "samples", None)
        if isinstance(samples, list) and samples:
            digest = hashlib.sha256()
            for path, label in samples:
                info = os.stat(path)
                digest.update(f"{path}\0{label}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
            return digest.hexdigest()
        for name in ("images", "data"):
            array = getattr(dataset, name, None)
            if isinstance(array, torch.Tensor):
                array = array.numpy()
            if hasattr(array, "tobytes") and hasattr(array, "shape"):
                return hashlib.sha256(memoryview(array.tobytes())).hexdigest()
        dataset = getattr(dataset, "base", None) or getattr(dataset, "dataset", None)
        if dataset is None:
            break
    return None


def _read_or_build(data: DataBundle, progress: bool) -> Optional[TensorCache]:
    path = cache_file(data)
    if path.is_file():
        try:
            cache = _read(path, data)
            log.info("tensor cache: read %s", path)
            return cache
        except _StaleCache as exc:
            log.warning("tensor cache %s %s; rebuilding it", path, exc)
    start = time.perf_counter()
    try:
        cache = _build(data, progress)
    except _NotExact as exc:
        log.warning("tensor cache: %s; %s stays on the DataLoader path", exc, data.name)
        return None
    atomic_torch_save({"format": CACHE_FORMAT, "dataset": data.name, "divisor": cache.divisor,
                       "train_images": cache.train_images, "train_labels": cache.train_labels,
                       "test_images": cache.test_images, "test_labels": cache.test_labels}, path)
    log.info("tensor cache: decoded %s (%d + %d images) in %.1f s into %s", data.name, len(cache.train_labels),
             len(cache.test_labels), time.perf_counter() - start, path)
    return cache


class _StaleCache(Exception):
    """The file on disk is unreadable or does not hold this dataset."""


class _NotExact(Exception):
    """The dataset's pixels are not integers / pixel_divisor: a uint8 cache would change them."""


def _read(path: Path, data: DataBundle) -> TensorCache:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated or foreign file; all mean "rebuild"
        raise _StaleCache(f"cannot be read ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(state, dict) or state.get("format") != CACHE_FORMAT:
        raise _StaleCache(f"is not a {CACHE_FORMAT} file")
    shape = tuple(data.input_shape)
    for split, size in (("train", len(data.train)), ("test", len(data.test))):  # type: ignore[arg-type]
        images, labels = state.get(f"{split}_images"), state.get(f"{split}_labels")
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or tuple(images.shape) != (size, *shape):
            raise _StaleCache(f"holds other {split} images than the dataset's {size} × {shape}")
        if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (size,):
            raise _StaleCache(f"holds other {split} labels")
    if state.get("divisor") != data.pixel_divisor:
        raise _StaleCache("was written with another pixel scale")
    return TensorCache(state["train_images"], state["train_labels"].long(), state["test_images"],
                       state["test_labels"].long(), data.pixel_divisor, data.augmentation)


def _build(data: DataBundle, progress: bool) -> TensorCache:
    """Decode both splits through the datasets' own (un-augmented) transforms, in threads (Pillow's
    decoders release the GIL), and keep each image as uint8; an image that is not exactly integers /
    ``pixel_divisor`` is a _NotExact naming the dataset (its builder should not declare it cacheable)."""
    splits = [("train", data.plain_train), ("test", data.test)]
    total = sum(len(split) for _, split in splits)  # type: ignore[arg-type]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    tensors: List[torch.Tensor] = []
    with tqdm(total=total, desc=f"tensor cache {data.name}", unit="img", disable=None if progress else True) as bar, \
            ThreadPoolExecutor(max_workers=max(1, min(8, cores))) as pool:
        for name, split in splits:
            chunks = [range(begin, min(begin + _BUILD_CHUNK, len(split)))  # type: ignore[arg-type]
                      for begin in range(0, len(split), _BUILD_CHUNK)]  # type: ignore[arg-type]
            images = torch.empty((len(split), *data.input_shape), dtype=torch.uint8)  # type: ignore[arg-type]
            labels = torch.empty(len(split), dtype=torch.long)  # type: ignore[arg-type]
            for chunk, (x, y) in zip(chunks, pool.map(lambda c, s=split: _decode(s, c), chunks)):
                quantised = _quantise(x, data.pixel_divisor, data.name, name)
                images[chunk.start:chunk.stop] = quantised
                labels[chunk.start:chunk.stop] = y
                bar.update(len(chunk))
            tensors += [images, labels]
    return TensorCache(*tensors, divisor=data.pixel_divisor, augmentation=data.augmentation)


def _decode(split: Dataset, positions: range) -> Tuple[torch.Tensor, torch.Tensor]:
    items = [split[i] for i in positions]
    return torch.stack([item[0] for item in items]), torch.tensor([int(item[1]) for item in items])


def _quantise(x: torch.Tensor, divisor: int, dataset: str, split: str) -> torch.Tensor:
    levels = torch.round(x * divisor)
    quantised = levels.clamp(0, 255).to(torch.uint8)
    if not torch.equal(to_float(quantised, divisor), x):
        raise _NotExact(f"the {split} images of {dataset} are not integers / {divisor}, so a uint8 cache would "
                        "change them")
    return quantised
