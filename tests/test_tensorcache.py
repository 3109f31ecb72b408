"""The tensor cache: exact pixels, the augmentation recipe replayed in batches, pure-function epochs,
bit-identical resumes, a cache on disk that survives processes and is rebuilt when stale, and a hot
loop that reads the device once per log interval."""
import logging
import math
import shutil

import pytest
import torch
from PIL import Image

from robustbench_aft import load_dataset, tensorcache
from robustbench_aft.config import TrainConfig
from robustbench_aft.data import Augmentation, epoch_sampler
from robustbench_aft.engine import LOG_INTERVAL, NumericalError, fine_tune, read_training_checkpoint
from robustbench_aft.errors import ConfigError
from robustbench_aft.registry import METHODS
from robustbench_aft.signals import Interrupted
from robustbench_aft.tensorcache import DeviceEpoch, augment, cache_file, tensor_cache, to_float

from .conftest import StopAfter

CPU = torch.device("cpu")


def _forget_loaded():
    """As a new process would start: nothing decoded in memory, only the files on disk."""
    tensorcache._LOADED.clear()


@pytest.fixture
def small_cifar_jpeg(cifar10_jpeg_root, tmp_path):
    """12 training and 6 test JPEGs of each of 3 CIFAR-10 (JPEG q75) classes, in an ImageFolder tree."""
    root = tmp_path / "c10"
    for split, count in (("train", 12), ("test", 6)):
        for name in sorted(p.name for p in (cifar10_jpeg_root / split).iterdir())[:3]:
            (root / split / name).mkdir(parents=True)
            for path in sorted((cifar10_jpeg_root / split / name).iterdir())[:count]:
                shutil.copy(path, root / split / name / path.name)
    return root


def test_cached_cifar_jpegs_are_bit_identical_to_to_tensor(small_cifar_jpeg):
    from torchvision import transforms

    data = load_dataset(f"folder:{small_cifar_jpeg}")
    assert data.augmentation == Augmentation(shift=4, flip=True)  # 32 // 8
    cache = tensor_cache(data, progress=False)
    assert cache is not None and cache.train_images.dtype == torch.uint8
    to_tensor = transforms.ToTensor()
    for split, samples in (("train", data.plain_train.base.samples), ("test", data.test.base.samples)):
        cached = cache.split(split)
        for i, (path, label) in enumerate(samples):
            with Image.open(path) as image:
                expected = to_tensor(image.convert("RGB"))
            x, y, index = cached[i]
            assert torch.equal(x, expected) and (y, index) == (label, i)
        x, y = cached.collect(range(len(samples)))
        assert torch.equal(x[3], cached[3][0]) and y.tolist() == [label for _, label in samples]
    assert torch.equal(cache.split("test")[5][0], data.test[5][0])


def test_digits_are_cached_exactly_and_their_augmentation_never_flips(digits):
    assert digits.augmentation == Augmentation(shift=1, flip=False) and digits.pixel_divisor == 16
    cache = tensor_cache(digits, progress=False)
    assert int(cache.train_images.max()) == 16
    for i in range(0, len(digits.test), 37):
        assert torch.equal(cache.split("test")[i][0], digits.test[i][0])
    for i in range(0, len(digits.train), 37):
        assert torch.equal(cache.split("train")[i][0], digits.plain_train[i][0])
    images = cache.train_images[:400]
    out = augment(images, digits.augmentation, torch.Generator().manual_seed(0))
    for original, shifted in zip(images, out):
        assert _how_made(original, shifted, shift=1) in {(dy, dx, False) for dy in range(3) for dx in range(3)}


def _candidates(image: torch.Tensor, shift: int):
    height, width = image.shape[1:]
    padded = torch.nn.functional.pad(image, (shift,) * 4)
    for dy in range(2 * shift + 1):
        for dx in range(2 * shift + 1):
            crop = padded[:, dy:dy + height, dx:dx + width]
            yield (dy, dx, False), crop
            yield (dy, dx, True), crop.flip(-1)


def _how_made(original: torch.Tensor, augmented: torch.Tensor, shift: int):
    """The (dy, dx, flipped) that turns ``original`` into ``augmented`` (the first, where several do)."""
    matches = [how for how, crop in _candidates(original, shift) if torch.equal(crop, augmented)]
    assert matches, "the augmented image is no crop or flipped crop of the padded original"
    return matches[0]


def test_batched_crop_flip_draws_the_torchvision_recipe_uniformly():
    torch.manual_seed(0)
    # Distinct pixel values everywhere: every (dy, dx, flip) gives a different image.
    image = torch.randperm(3 * 8 * 8).remainder(250).add(1).to(torch.uint8).view(3, 8, 8)
    n = 4000
    out = augment(image.expand(n, 3, 8, 8), Augmentation(shift=2, flip=True), torch.Generator().manual_seed(1))
    assert out.shape == (n, 3, 8, 8) and out.dtype == torch.uint8
    made = [_how_made(image, x, shift=2) for x in out[:800]]
    flips = sum(flipped for _, _, flipped in made) / len(made)
    assert 0.42 < flips < 0.58
    for axis in (0, 1):
        counts = torch.bincount(torch.tensor([how[axis] for how in made]), minlength=5)
        assert counts.min() > 0.6 * len(made) / 5 and counts.max() < 1.4 * len(made) / 5
    # Zero padding: the share of zero (border) pixels is E[|dy|] and E[|dx|] of uniform shifts over 8 rows.
    zeros = (out == 0).float().mean().item()
    expected_border = 1 - (1 - 1.2 / 8) ** 2  # E|d| = 1.2 for d uniform on -2..2
    assert abs(zeros - expected_border) < 0.02
    # The same set of images torchvision's RandomCrop(padding) + RandomHorizontalFlip makes.
    from torchvision import transforms

    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    recipe = transforms.Compose([transforms.RandomCrop(8, padding=2), transforms.RandomHorizontalFlip(),
                                 transforms.PILToTensor()])
    torchvision_made = {_how_made(image, recipe(pil), shift=2) for _ in range(600)}
    assert torchvision_made == set(made) and len(torchvision_made) == 5 * 5 * 2
    assert torch.equal(to_float(out[:3], 255), out[:3].float().div(255))


def test_an_epoch_is_a_pure_function_of_seed_epoch_and_batch(digits):
    cache = tensor_cache(digits, progress=False)
    positions = list(range(0, 1000, 3))
    first = list(DeviceEpoch(cache, positions, 64, seed=4, epoch=2))
    again = list(DeviceEpoch(cache, positions, 64, seed=4, epoch=2))
    tail = list(DeviceEpoch(cache, positions, 64, seed=4, epoch=2, skip_batches=3))
    other = list(DeviceEpoch(cache, positions, 64, seed=4, epoch=3))
    assert len(first) == math.ceil(len(positions) / 64) == len(tail) + 3
    for a, b in zip(first, again):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    for a, b in zip(first[3:], tail):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(first[0][2], other[0][2])
    order = [positions[i] for i in epoch_sampler(len(positions), 64, 4, 2)]
    assert torch.cat([index for _, _, index in first]).tolist() == order  # the DataLoader path's order
    x, y, index = first[0]
    assert torch.equal(y, cache.train_labels[index]) and x.min() >= 0 and x.max() <= 1


def test_the_cache_is_reused_across_processes_and_rebuilt_when_stale(digits, caplog):
    tensor_cache(digits, progress=False)
    path = cache_file(digits)
    assert path.is_file()
    _forget_loaded()
    with caplog.at_level(logging.INFO, logger="robustbench_aft.tensorcache"):
        tensor_cache(digits, progress=False)
    assert f"tensor cache: read {path}" in caplog.text
    for damage in (lambda: path.write_bytes(path.read_bytes()[:200]),
                   lambda: torch.save({"format": tensorcache.CACHE_FORMAT, "train_images": torch.zeros(3)}, path)):
        damage()
        _forget_loaded()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="robustbench_aft.tensorcache"):
            rebuilt = tensor_cache(digits, progress=False)
        assert f"tensor cache {path}" in caplog.text and "rebuilding it" in caplog.text
        assert torch.equal(rebuilt.split("test")[0][0], digits.test[0][0])
        _forget_loaded()
        assert tensor_cache(digits, progress=False) is not None  # the rebuilt file reads again


def test_the_size_bound_keeps_a_dataset_on_the_dataloader_path(digits, monkeypatch):
    monkeypatch.setenv(tensorcache.DEVICE_DATA_ENV, "0")
    assert tensor_cache(digits) is None
    assert tensorcache.evaluation_split(digits) is digits.test
    monkeypatch.setenv(tensorcache.DEVICE_DATA_ENV, "lots")
    with pytest.raises(ConfigError, match="give a number of GiB"):
        tensorcache.device_bytes_limit()
    monkeypatch.setenv(tensorcache.DEVICE_DATA_ENV, "0.001")  # 1 MiB: digits' 0.2 MB fits
    assert tensor_cache(digits, progress=False) is not None
    resized = load_dataset("digits@16px")
    assert resized.augmentation is None and tensor_cache(resized) is None


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_inside_an_epoch_of_device_data_is_bit_identical(digits_model, digits, tmp_path, caplog):
    train = TrainConfig(epochs=2, batch_size=64, train_subset=600)  # 10 batches an epoch
    with caplog.at_level(logging.INFO, logger="robustbench_aft.engine"):
        straight = fine_tune("trades", digits_model, digits, train, eps=0.15, seed=2, device=CPU, progress=False)
    assert "the training split is on cpu (tensor cache" in caplog.text
    with pytest.raises(Interrupted):
        fine_tune("trades", digits_model, digits, train, eps=0.15, seed=2, device=CPU, progress=False,
                  out_dir=tmp_path, stop=StopAfter(10 + 4))
    state = read_training_checkpoint(tmp_path / "last.pt")
    assert (state["next_epoch"], state["next_batch"]) == (2, 4)
    _forget_loaded()  # the resumed process reads the cache from disk
    resumed = fine_tune("trades", digits_model, digits, train, eps=0.15, seed=2, device=CPU, progress=False,
                        out_dir=tmp_path, resume=True)
    assert _same_weights(resumed.model.state_dict(), straight.model.state_dict())
    assert resumed.history == straight.history and resumed.validation[-1]["pgd"] == straight.validation[-1]["pgd"]


def test_a_nan_after_the_first_batch_is_named_without_a_per_batch_read(digits_model, digits, tmp_path, monkeypatch):
    vaft = METHODS.get("vaft")
    update = vaft.update
    calls = {"n": 0}

    def poisoned(self, batch):
        terms = update(self, batch)
        calls["n"] += 1
        if calls["n"] == 3:
            terms["ce"] = torch.tensor(float("inf"))
        return terms

    monkeypatch.setattr(vaft, "update", poisoned)
    with pytest.raises(NumericalError, match=r"vaft seed 1 epoch 1 batch 3: loss term 'ce' is inf; the last good"):
        fine_tune("vaft", digits_model, digits, TrainConfig(epochs=1, batch_size=32, train_subset=320), eps=0.1,
                  seed=1, device=CPU, out_dir=tmp_path, progress=False)
    assert not (tmp_path / "last.pt").exists()
    assert calls["n"] == 10 < LOG_INTERVAL  # read at the epoch's end, not after batch 3


def test_the_hot_loop_reads_the_device_once_per_log_interval_not_per_batch(digits_model, digits, monkeypatch):
    reads = {"n": 0}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            reads["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def reads_of(subset: int) -> int:
        reads["n"] = 0
        fine_tune("vaft", digits_model, digits, TrainConfig(epochs=1, batch_size=16, train_subset=subset, val_size=0),
                  eps=0.1, seed=0, device=CPU, progress=False)
        return reads["n"]

    # 4 and 20 batches, both under one log interval: the same reads, none of them per batch.
    assert 20 < LOG_INTERVAL
    assert reads_of(64) == reads_of(320)
