"""Natural pre-training and the sources of a pre-trained model.

``resolve(source, ...)`` accepts:

* ``auto``: the cached natural model for (dataset, arch, seed, recipe); trained on a miss;
* a checkpoint path: ours, a plain ``state_dict``, or ``module.``-prefixed DataParallel keys;
* ``robustbench:NAME``: a RobustBench model-zoo entry (the ``zoo`` extra), e.g. ``Standard``;
* a model folder (``config.json`` + ``model.safetensors``, written by ``bench export --model``) or
  ``hf-hub:ORG/NAME``, such a folder on the Hugging Face Hub (the ``hub`` extra; see :mod:`.models.hub`).

The cache lives in ``$ROBUSTBENCH_AFT_CACHE`` (default ``~/.cache/robustbench_aft``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .data import DataBundle, make_loader
from .errors import CheckpointError, ConfigError, not_a_file_reason
from .files import atomic_torch_save, atomic_write_text, cache_dir
from .models import adapt, build_model
from .reproducibility import provenance, seed_everything
from .signals import StopSignal
from .tensorcache import evaluation_split, shuffled_batches, tensor_cache

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "robustbench_aft.checkpoint/1"


@dataclass(frozen=True)
class NaturalRecipe:
    """How a natural (non-adversarial) model is trained: SGD with momentum, cosine lr per step.

    Attributes:
        epochs: passes over the training set.
        batch_size, lr, momentum, weight_decay: SGD settings.
    """

    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def key(self) -> str:
        """A short hash that changes with any field (part of the cache file name)."""
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]


def default_recipe(data: DataBundle) -> NaturalRecipe:
    """The dataset's natural recipe (``DataBundle.natural_recipe`` over the 100-epoch "Standard" one;
    digits: 30 epochs at batch 64, a few seconds on a CPU)."""
    return NaturalRecipe(**data.natural_recipe)


def cache_path(data: DataBundle, arch: str, seed: int, recipe: NaturalRecipe) -> Path:
    # External archs carry ':' and brackets (timm:vit_tiny_patch16_224[img_size=32]); file names do not.
    safe_arch = "".join(c if c.isalnum() or c in "-_." else "_" for c in arch)
    return cache_dir() / "natural" / f"{data.key}-{safe_arch}-seed{seed}-{recipe.key()}.pt"


def test_accuracy(model: nn.Module, data: DataBundle, device: torch.device, batch_size: int = 512) -> float:
    """Clean accuracy (%) on the whole test split, in eval mode; the model's mode is restored."""
    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y, _ in make_loader(evaluation_split(data), batch_size, shuffle=False):
            correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
            total += len(y)
    model.train(was_training)
    return 100.0 * correct / total


def pretrain(data: DataBundle, arch: str, recipe: NaturalRecipe, seed: int, device: torch.device,
             progress: bool = True, num_workers: int = 0,
             stop: Optional[StopSignal] = None,
             on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """Train ``arch`` naturally on ``data.train``; returns the model and its metadata. ``on_epoch``
    receives each epoch's number, lr, mean ``cross_entropy``, cumulative images and seconds (trackers).

    ``stop`` (SIGINT/SIGTERM) ends it after the current batch with :class:`Interrupted`; nothing
    is cached then, and the next run pre-trains again from the start.

    A dataset with a tensor cache (:mod:`.tensorcache`) trains from it on ``device`` unless
    ``num_workers`` asks for DataLoader workers; the loss stays on the device between the progress
    bar's reads (every ``LOG_INTERVAL`` batches and at the end of an epoch).
    """
    from .engine import LOG_INTERVAL

    seed_everything(seed)
    model = build_model(arch, data.num_classes, data.input_shape[0], data.mean, data.std, data.input_shape,
                        data.user_normalisation).to(device)
    cache = tensor_cache(data, device, progress=progress) if num_workers == 0 else None
    loader = make_loader(data.train, recipe.batch_size, shuffle=True, seed=seed, num_workers=num_workers)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs * len(loader))
    start = time.perf_counter()
    images = 0
    model.train()
    with tqdm(total=recipe.epochs * len(loader), desc=f"pretrain {arch} on {data.name}", unit="batch",
              disable=None if progress else True) as bar:
        for epoch in range(recipe.epochs):
            loss_sum, batches, lr = torch.zeros((), device=device), 0, scheduler.get_last_lr()[0]
            epoch_batches = shuffled_batches(cache, recipe.batch_size, seed, epoch) if cache is not None else loader
            for x, y, _ in epoch_batches:
                x, y = x.to(device), y.to(device)
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                images += len(y)
                loss_sum, batches = loss_sum + loss.detach(), batches + 1
                bar.update(1)
                if batches % LOG_INTERVAL == 0:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.3f}")
                if stop is not None:
                    stop.check(f"natural pre-training of {arch} on {data.name}")
            mean_loss = float(loss_sum) / max(batches, 1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{mean_loss:.3f}")
            if on_epoch is not None:
                on_epoch({"epoch": epoch + 1, "lr": lr, "terms": {"cross_entropy": mean_loss},
                          "images": images, "seconds": time.perf_counter() - start, "validation": None})
    seconds = time.perf_counter() - start
    accuracy = test_accuracy(model, data, device)
    log.info("pretrained %s on %s: test accuracy %.2f%% in %.1f s (%.0f images/s)",
             arch, data.name, accuracy, seconds, images / max(seconds, 1e-9))
    info = {"test_accuracy": accuracy, "seconds": seconds, "images_per_second": images / max(seconds, 1e-9)}
    return model, info


def save_checkpoint(model: nn.Module, path: Path, arch: str, data: DataBundle, **metadata: Any) -> Path:
    """Write a checkpoint atomically with the metadata needed to rebuild and trace the model."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "arch": arch,
        "dataset": data.name,
        "num_classes": data.num_classes,
        "input_shape": list(data.input_shape),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": json.loads(json.dumps(metadata, default=str)),
    }
    atomic_torch_save(payload, path)
    record_sha256(Path(path))
    return Path(path)


SHA256_SUFFIX = ".sha256"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_sha256(path: Path) -> None:
    """Write ``<path>.sha256`` (``sha256sum`` format) next to a checkpoint this tool wrote."""
    atomic_write_text(f"{file_sha256(path)}  {path.name}\n", path.with_name(path.name + SHA256_SUFFIX))


def what_the_file_is(path: Path) -> Optional[str]:
    """Why ``path`` is clearly not a checkpoint (empty, an HTML page, a text file), or None.

    The most frequent broken "checkpoint" is a failed download saved as the server's HTML error
    page, which torch.load reports as an unpickling traceback."""
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes)"
    with open(path, "rb") as handle:
        head = handle.read(512)
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return (f"is an HTML page ({size} bytes), not a checkpoint: probably a failed download saved as a file; "
                "download it again")
    if head.startswith((b"PK\x03\x04", b"\x80")):  # a zip archive (torch.save) or a legacy pickle
        return None
    if b"\x00" in head:
        return None  # binary: let torch.load say what is wrong with it
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    first_line = head.decode("utf-8").strip().splitlines()[0][:60] if head.strip() else ""
    return f"is a text file ({size} bytes, starting {first_line!r}), not a checkpoint"


def _read_checkpoint(path: Path) -> Any:
    reason = not_a_file_reason(path) or what_the_file_is(path)
    if reason:
        raise CheckpointError(f"checkpoint {path} {reason}")
    recorded = path.with_name(path.name + SHA256_SUFFIX)
    if recorded.is_file():
        expected = recorded.read_text().split()[0] if recorded.read_text().strip() else ""
        actual = file_sha256(path)
        if expected != actual:
            raise CheckpointError(f"checkpoint {path} fails its recorded SHA-256 ({recorded.name}: {expected[:12]}…, "
                                  f"the file: {actual[:12]}…): it changed or is corrupt since it was written")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; all mean "unreadable"
        raise CheckpointError(f"cannot read checkpoint {path}: truncated or not a torch checkpoint "
                              f"({_load_failure(exc)})") from None


def _load_failure(exc: Exception) -> str:
    """torch.load's error, reduced to what a user can act on."""
    text = " ".join(str(exc).split())
    if "central directory" in text or "PytorchStreamReader" in text:
        return "its zip archive is incomplete: the file was cut short"
    if "Weights only load failed" in text:
        return "not a zip archive of tensors; a file written by torch.save of a state_dict is expected"
    return text[:160]


def _state_dict_of(payload: Any, path: Path) -> Dict[str, torch.Tensor]:
    if isinstance(payload, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(payload.get(key), dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not payload or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointError(f"checkpoint {path} holds no state_dict (expected a dict of tensors, "
                              "or one under 'state_dict'/'model_state_dict'/'model')")
    if all(k.startswith("module.") for k in payload):
        payload = {k[len("module."):]: v for k, v in payload.items()}
    return payload


def load_checkpoint(path: str, data: DataBundle, arch: str) -> Tuple[nn.Module, Dict[str, Any]]:
    """Build ``arch`` for ``data`` and load the weights at ``path``; every mismatch is a CheckpointError."""
    path_obj = Path(path).expanduser()
    payload = _read_checkpoint(path_obj)
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT and payload.get("arch") != arch:
        raise CheckpointError(f"checkpoint {path} was saved for arch {payload.get('arch')!r}, not {arch!r}: "
                              f"pass --arch {payload.get('arch')}")
    state = _state_dict_of(payload, path_obj)
    model = build_model(arch, data.num_classes, data.input_shape[0], data.mean, data.std, data.input_shape,
                        data.user_normalisation)
    expected = model.state_dict()
    head_key = "head.weight"
    if head_key in state and head_key in expected and state[head_key].shape[0] != expected[head_key].shape[0]:
        raise CheckpointError(f"checkpoint {path} has {state[head_key].shape[0]} classes but dataset "
                              f"{data.name} has {expected[head_key].shape[0]}")
    missing = [k for k in expected if k not in state and not k.startswith("normalize.")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        def preview(keys):
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {preview(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {preview(unexpected)}")
        raise CheckpointError(f"checkpoint {path} does not fit arch {arch!r}: " + "; ".join(parts))
    wrong_shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                    if k in state and state[k].shape != v.shape]
    if wrong_shapes:
        raise CheckpointError(f"checkpoint {path} does not fit arch {arch!r} on {data.name}: "
                              f"shape mismatch in {', '.join(wrong_shapes[:3])}")
    model.load_state_dict({**expected, **state})
    metadata = payload.get("metadata", {}) if isinstance(payload, dict) else {}
    return model, {"source": str(path), **({"metadata": metadata} if metadata else {})}


def _load_robustbench(name: str, data: DataBundle) -> Tuple[nn.Module, Dict[str, Any]]:
    from ._compat import import_robustbench

    robustbench = import_robustbench()
    if data.name not in ("cifar10", "cifar100"):
        raise ConfigError(f"robustbench:{name} is a CIFAR model zoo entry; use --dataset cifar10 or cifar100")
    model_dir = cache_dir() / "robustbench"
    try:
        model = robustbench.utils.load_model(model_name=name, model_dir=str(model_dir), dataset=data.name,
                                             threat_model="Linf")
    except Exception as exc:  # robustbench raises bare exceptions for unknown names and failed downloads
        raise CheckpointError(f"robustbench:{name} could not be loaded from {model_dir} "
                              f"({' '.join(str(exc).split())[:160]})") from None
    # The same adapter as any external model (models/external.py): the zoo model keeps its own head
    # and normalises its inputs itself.
    return adapt(model, data.input_shape), {"source": f"robustbench:{name}"}


def resolve(source: str, data: DataBundle, arch: Optional[str], seed: int, device: torch.device,
            recipe: Optional[NaturalRecipe] = None, progress: bool = True,
            stop: Optional[StopSignal] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """The model named by ``source`` (``auto``, a path, a model folder, ``hf-hub:ORG/NAME`` or
    ``robustbench:NAME``). A model folder names its own arch; ``arch`` None accepts it, any other must match."""
    from .models.hub import is_model_folder, load_model_folder

    if is_model_folder(source):
        model, info = load_model_folder(source, data, arch)
        return model.to(device), info
    if source == "auto":
        recipe = recipe or default_recipe(data)
        path = cache_path(data, arch, seed, recipe)
        if path.is_file():
            log.info("using cached natural model %s", path)
            model, info = load_checkpoint(str(path), data, arch)
        else:
            log.info("no cached natural model for %s/%s seed %d: pre-training it", data.name, arch, seed)
            model, info = pretrain(data, arch, recipe, seed, device, progress=progress, stop=stop)
            save_checkpoint(model, path, arch, data, recipe=asdict(recipe), seed=seed,
                            provenance=provenance(device), **info)
            info = {"source": str(path), "metadata": info}
        return model.to(device), info
    if source.startswith("robustbench:"):
        model, info = _load_robustbench(source.split(":", 1)[1], data)
        return model.to(device), info
    model, info = load_checkpoint(source, data, arch)
    return model.to(device), info


def transfer_source(spec: Optional[str], data: DataBundle, arch: str, device: torch.device,
                    natural: Optional[nn.Module] = None, seed: int = 0, progress: bool = True) -> nn.Module:
    """The model the ``transfer`` attack crafts on: ``natural`` (or None) is the run's natural model
    (``natural`` when given, else the cached one of ``arch``, pre-trained if missing), anything else
    a checkpoint path or ``robustbench:NAME``; a checkpoint of ours is built with its own arch."""
    if spec in (None, "natural"):
        return natural.to(device) if natural is not None else resolve("auto", data, arch, seed, device,
                                                                      progress=progress)[0]
    from .models.hub import is_model_folder

    source_arch: Optional[str] = arch
    if is_model_folder(spec):
        source_arch = None  # a model folder names its own arch
    elif not spec.startswith("robustbench:"):
        payload = _read_checkpoint(Path(spec).expanduser())
        if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT and payload.get("arch"):
            source_arch = payload["arch"]
    return resolve(spec, data, source_arch, seed, device, progress=progress)[0].eval()


def recipe_with(recipe: NaturalRecipe, **overrides: Any) -> NaturalRecipe:
    """``recipe`` with the non-None overrides applied (None means "not given")."""
    return replace(recipe, **{k: v for k, v in overrides.items() if v is not None})
