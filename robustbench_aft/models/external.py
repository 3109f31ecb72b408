"""Fine-tune your own model: timm, torchvision and any ``nn.Module`` factory as an ``--arch``.

An external architecture is named ``SOURCE:NAME`` with optional keyword arguments in brackets,
the canonical form that is stored with results and keys the natural-model cache:

* ``timm:NAME`` — any ``timm.create_model`` name (the ``timm`` extra), e.g. ``timm:resnet18``,
  ``timm:vit_tiny_patch16_224[img_size=32]``;
* ``torchvision:NAME`` — any ``torchvision.models.get_model`` name, e.g. ``torchvision:resnet18``;
* ``py:package.module:factory`` — a callable returning an ``nn.Module``.

Inputs are normalised with ``--mean``/``--std`` when given (the user knows what their weights
expect), else with the statistics the model declares (timm's ``pretrained_cfg`` mean and std, which
weights trained with timm expect), else with the dataset's. Every one is adapted to the
classifier contract of :mod:`._base` by the model's own API, not by
hooks: timm's ``reset_classifier(0)`` (the network then returns its pooled pre-logits features,
``num_features`` wide); for torchvision and ``py:`` models the classifier attribute (``fc``,
``classifier``, ``head`` or ``heads``: a ``Linear``, or a ``Sequential`` ending in one) is replaced
by ``Identity``. What is left is the body of an :class:`ImageClassifier` with a new linear head for
the dataset's classes, so ``forward == head(forward_features)`` holds by construction; that the
body really returns (B, D) features is checked once at build time. A network with none of those
attributes keeps the hook-based fallback: its head is the ``nn.Linear`` that its forward calls last
(found by watching a probe batch, not by ``modules()`` order, which is registration order).
Before anything is replaced, one probe batch checks that the network returns a tensor and that
this tensor *is* the classifier's output: an operation after the classifier (a LogSoftmax, a
temperature) would otherwise run on the features in front of the new head, and is refused in one
line that names it (:mod:`._probe`). Weights are randomly initialised: hub weights cannot be fetched here, and the
natural model is pre-trained (``--pretrained auto``) or loaded (``--pretrained PATH``) as for the
built-in architectures.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import logging
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from ._base import ImageClassifier, Normalize
from ._probe import ForwardProbe, probe_forward

log = logging.getLogger(__name__)

SOURCES = ("timm", "torchvision", "py")
CLASSIFIER_ATTRIBUTES = ("fc", "classifier", "head", "heads")


def is_external(arch: str) -> bool:
    """Whether ``arch`` names an external architecture (``timm:``, ``torchvision:``, ``py:``)."""
    return arch.split(":", 1)[0] in SOURCES and ":" in arch


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def parse_kwargs(text: Optional[str]) -> Dict[str, Any]:
    """``--arch-kwargs k=v,k2=v2`` as a dict; values are read as YAML scalars (``32`` is an int)."""
    kwargs: Dict[str, Any] = {}
    for item in (part.strip() for part in (text or "").split(",") if part.strip()):
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"--arch-kwargs: {item!r} is not KEY=VALUE")
        kwargs[key.strip()] = _parse_value(value.strip())
    return kwargs


def split_arch(arch: str) -> Tuple[str, str, Dict[str, Any]]:
    """(source, name, kwargs) of an external arch string ``SOURCE:NAME[k=v,...]``."""
    source, _, rest = arch.partition(":")
    name, bracket, kwargs_text = rest.partition("[")
    if bracket and not kwargs_text.endswith("]"):
        raise ConfigError(f"--arch {arch}: keyword arguments go in brackets, e.g. "
                          "timm:vit_tiny_patch16_224[img_size=32]")
    if not name:
        raise ConfigError(f"--arch {arch}: give a model name after {source}:")
    if source == "py" and ":" not in name:
        raise ConfigError(f"--arch {arch}: a py: model is py:package.module:factory")
    return source, name, parse_kwargs(kwargs_text[:-1] if bracket else "")


def canonical_external(arch: str, kwargs: Optional[Dict[str, Any]] = None) -> str:
    """The canonical arch string: the source, the name and the keyword arguments sorted."""
    source, name, own = split_arch(arch)
    merged = {**own, **(kwargs or {})}
    if not merged:
        return f"{source}:{name}"
    return f"{source}:{name}[" + ",".join(f"{k}={merged[k]}" for k in sorted(merged)) + "]"


def _suggest(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.7)
    return f" Did you mean {', '.join(close)}?" if close else ""


def _timm_network(name: str, kwargs: Dict[str, Any], in_channels: int) -> Tuple[nn.Module, int, str]:
    try:
        import timm
    except ImportError:
        raise ConfigError("timm: architectures need the timm package: pip install 'robustbench-aft[timm]'") from None
    if kwargs.get("pretrained"):
        raise ConfigError(f"timm:{name} with pretrained=True needs the model hub, which is not reachable here; "
                          "pre-train it with --pretrained auto or load your weights with --pretrained PATH")
    if not timm.is_model(name):
        raise ConfigError(f"timm:{name} is not a timm model.{_suggest(name, timm.list_models())} "
                          "(timm.list_models() lists them all)")
    try:
        network = timm.create_model(name, pretrained=False, in_chans=in_channels, **kwargs)
    except RuntimeError as exc:
        raise ConfigError(f"timm:{name}: {' '.join(str(exc).split())[:200]}") from None
    except TypeError as exc:
        raise ConfigError(f"timm:{name} does not take these keyword arguments ({exc})") from None
    network.reset_classifier(0)
    # Models with a pre-logits layer (MobileNetV3's conv_head) return head_hidden_size features, not num_features.
    width = getattr(network, "head_hidden_size", None) or network.num_features
    return network, int(width), "timm's reset_classifier(0)"


def declared_normalisation(network: nn.Module, channels: int) -> Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]]:
    """The (mean, std) a network declares for its inputs (timm's ``pretrained_cfg``), when it has
    one per input channel; weights trained with timm expect exactly these."""
    config = getattr(network, "pretrained_cfg", None) or {}
    mean, std = config.get("mean"), config.get("std")
    if mean is None or std is None or len(mean) != channels or len(std) != channels:
        return None
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _torchvision_network(name: str, kwargs: Dict[str, Any], in_channels: int) -> Tuple[nn.Module, Optional[int], str]:
    from torchvision import models

    available = models.list_models()
    if name not in available:
        raise ConfigError(f"torchvision:{name} is not a torchvision model.{_suggest(name, available)} "
                          "(torchvision.models.list_models() lists them all)")
    if in_channels != 3:
        raise ConfigError(f"torchvision:{name} takes 3-channel images; this dataset has {in_channels}")
    if kwargs.get("weights"):
        raise ConfigError(f"torchvision:{name} with weights= needs a download, which is not possible here; "
                          "load your weights with --pretrained PATH")
    try:
        network = models.get_model(name, weights=None, **kwargs)
    except ValueError as exc:
        raise ConfigError(f"torchvision:{name}: {' '.join(str(exc).split())[:200]}") from None
    except TypeError as exc:
        raise ConfigError(f"torchvision:{name} does not take these keyword arguments ({exc})") from None
    return network, None, ""


def _python_network(target: str, kwargs: Dict[str, Any], num_classes: int) -> Tuple[nn.Module, Optional[int], str]:
    module_name, _, attribute = target.rpartition(":")
    try:
        factory: Callable[..., nn.Module] = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"py:{target}: cannot import it ({exc})") from None
    accepted = inspect.signature(factory).parameters
    if "num_classes" in accepted and "num_classes" not in kwargs:
        kwargs = {**kwargs, "num_classes": num_classes}
    network = factory(**kwargs)
    if not isinstance(network, nn.Module):
        raise ConfigError(f"py:{target} returned a {type(network).__name__}, not an nn.Module")
    return network, None, ""


def _classifier_attribute(network: nn.Module) -> Optional[Tuple[nn.Linear, str, Callable[[], None]]]:
    """The network's classifier attribute: (its Linear, what it is in words, a function that
    replaces it by ``Identity``), or None when it has no recognisable one. Nothing is changed yet,
    so the intact network can be probed first."""
    for attribute in CLASSIFIER_ATTRIBUTES:
        layer = getattr(network, attribute, None)
        if isinstance(layer, nn.Linear):
            return (layer, f"its {attribute} Linear({layer.in_features}, {layer.out_features})",
                    lambda attribute=attribute: setattr(network, attribute, nn.Identity()))
        if isinstance(layer, nn.Sequential) and len(layer) and isinstance(layer[-1], nn.Linear):
            last = layer[-1]
            return (last, f"the last layer of its {attribute}, Linear({last.in_features}, {last.out_features})",
                    lambda layer=layer: layer.__setitem__(-1, nn.Identity()))
    return None


def _detach(network: nn.Module) -> Optional[Tuple[nn.Linear, str]]:
    """Replace the network's classifier attribute by ``Identity``; (the removed Linear, what was
    done), or None when it has no recognisable classifier attribute."""
    found = _classifier_attribute(network)
    if found is None:
        return None
    layer, what, replace = found
    replace()
    return layer, what


def detach_classifier(network: nn.Module) -> Optional[Tuple[int, str]]:
    """Replace the network's classifier attribute by ``Identity``; (feature width, what was done),
    or None when it has no recognisable classifier attribute."""
    detached = _detach(network)
    return None if detached is None else (detached[0].in_features, detached[1])


def _probe_batch(input_shape: Sequence[int]) -> torch.Tensor:
    # A generator of its own: building a model must not move the global RNG, so a seeded run draws
    # the same weights, orders and attacks as it did before these checks existed.
    return torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0))


def _watch(arch: str, network: nn.Module, x: torch.Tensor,
           targets: Optional[Sequence[nn.Linear]] = None) -> ForwardProbe:
    try:
        return probe_forward(network, x, targets)
    except (RuntimeError, AssertionError, ValueError) as exc:  # torch raises shape errors, user code asserts
        raise ConfigError(f"{arch} cannot run on {tuple(x.shape[1:])} images "
                          f"({' '.join(str(exc).split())[:160]})") from None


def _linear(layer: nn.Module) -> str:
    if isinstance(layer, nn.Linear):
        return f"Linear({layer.in_features}, {layer.out_features})"
    return type(layer).__name__


def _after(probe: ForwardProbe) -> str:
    if probe.follower:
        return f"{probe.follower} runs on its output"
    if not probe.from_classifier:
        return "its output is not what the forward returns"
    return "an operation in its forward changes its output"


def verified_classifier(arch: str, network: nn.Module, x: torch.Tensor, attribute: Optional[nn.Linear],
                        keep_head: bool) -> Tuple[nn.Linear, ForwardProbe]:
    """The classifier of ``network``, checked on the probe batch ``x`` to be the last operation of
    its forward: (the Linear, the probe). ``attribute``: the Linear its fc/classifier/head names,
    if any; otherwise the Linear the forward calls last. ``keep_head`` (``adapt``) or not (a new
    head replaces it) only changes the wording of the refusal, a one-line ConfigError."""
    probe = _watch(arch, network, x)
    if not isinstance(probe.output, torch.Tensor):
        raise ConfigError(f"{arch} returns a {type(probe.output).__name__}, not a tensor of logits; wrap it in a "
                          "module whose forward returns only the logits (e.g. `return self.net(x)[0]`) and use that")
    if probe.classifier is None:
        raise ConfigError(f"{arch}: the model has no nn.Linear classifier layer to use as its head (its forward "
                          "calls none); give it one, as fc, classifier or head")
    if attribute is not None and attribute is not probe.classifier:
        own = _watch(arch, network, x, [attribute])
        if own.classifier is None:
            name = next((n for n, m in network.named_modules() if m is attribute), "?")
            raise ConfigError(f"{arch}: its classifier {name} {_linear(attribute)} is never called by its "
                              f"forward ({probe.classifier_name} {_linear(probe.classifier)} is the last Linear it "
                              "calls); fc, classifier and head name the output layer, so rename the unused one")
        if not own.output_is_classifier_output():
            raise ConfigError(f"{arch}: its classifier {own.classifier_name} {_linear(attribute)} is not the last "
                              f"operation of its forward: {probe.classifier_name} {_linear(probe.classifier)} runs "
                              "after it; fc, classifier and head name the output layer, so rename this one")
        return attribute, own
    if not probe.output_is_classifier_output():
        where = f"its classifier {probe.classifier_name} {_linear(probe.classifier)}"
        # Either way the split (features → classifier) would silently drop or misplace that operation.
        consequence = ("the adapted network would not reproduce its logits" if keep_head
                       else "a new head in its place would move that onto the features")
        raise ConfigError(f"{arch}: {where} is not the last operation of its forward: {_after(probe)}; "
                          f"{consequence}; make forward end with the classifier (apply the rest in the loss or at "
                          "prediction time), or wrap the model in a module that does")
    return probe.classifier, probe


def adapt(network: nn.Module, input_shape: Sequence[int], mean: Optional[Sequence[float]] = None,
          std: Optional[Sequence[float]] = None) -> ImageClassifier:
    """Your trained ``nn.Module`` as an :class:`ImageClassifier` for :func:`fine_tune` and
    :func:`evaluate`, keeping its classifier's weights as the ``head``.

    ``network`` is changed in place (its classifier attribute becomes ``Identity``; pass a copy to
    keep the original). ``mean``/``std``: the normalisation it expects on [0, 1] images, applied by
    the adapter's first layer; leave them out when the network normalises its inputs itself.
    ``input_shape`` (C, H, W) is used once, for a probe batch: the adapted network must return the
    logits the original returns on it, or a ConfigError says what sits after the classifier.
    """
    channels = input_shape[0]
    mean, std = mean or [0.0] * channels, std or [1.0] * channels
    arch = type(network).__name__
    x = _probe_batch(input_shape)
    with torch.no_grad():
        normalised = Normalize(mean, std)(x)  # what the network sees inside the adapter
    attribute = _classifier_attribute(network)
    head, probe = verified_classifier(arch, network, normalised, attribute[0] if attribute else None, keep_head=True)
    if attribute is not None and attribute[0] is head:
        attribute[2]()
        body: nn.Module = network
    else:
        body = LastLinearFeatures(network, head)
    model = ImageClassifier(body, head.in_features, head.out_features, mean, std)
    model.head = head
    _check_features(arch, model, input_shape)
    _check_reproduces(arch, model, x, probe.output)
    return model


def _check_reproduces(arch: str, model: nn.Module, x: torch.Tensor, expected: torch.Tensor) -> None:
    """The adapted model returns, on the probe batch, the logits the original network returned."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            got = model(x)
    finally:
        for module, training in modes.items():
            module.training = training
    if got.shape != expected.shape or not torch.allclose(got, expected, atol=1e-5, rtol=1e-4):
        worst = (got - expected).abs().max().item() if got.shape == expected.shape else float("nan")
        raise ConfigError(f"{arch}: the adapted network does not reproduce its logits on a probe batch (largest "
                          f"difference {worst:.3g}); its forward does more than features → classifier")


class LastLinearFeatures(nn.Module):
    """The fallback body: runs the network and returns the input of its classifier Linear.

    ``classifier``: the Linear its forward calls last (:func:`verified_classifier` finds it on a
    probe batch); without one, the last ``nn.Linear`` of ``modules()`` (registration order), for
    the rare build that has no input shape to probe with.
    """

    def __init__(self, network: nn.Module, classifier: Optional[nn.Linear] = None) -> None:
        super().__init__()
        if classifier is None:
            linears = [m for m in network.modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise ConfigError("the model has no nn.Linear classifier layer to use as its head")
            classifier = linears[-1]
        self.network = network
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured = {}
        handle = self.classifier.register_forward_pre_hook(lambda _m, inputs: captured.update(features=inputs[0]))
        try:
            self.network(x)
        finally:
            handle.remove()
        return captured["features"].flatten(1)


def build_external(arch: str, num_classes: int, in_channels: int, mean: Sequence[float], std: Sequence[float],
                   input_shape: Optional[Sequence[int]] = None, user_normalisation: bool = False):
    """An :class:`ImageClassifier` around the external network named by ``arch`` (see the module doc).
    ``user_normalisation``: ``mean``/``std`` were given with ``--mean``/``--std`` and are kept even
    when the model declares its own."""
    source, name, kwargs = split_arch(arch)
    if source == "timm":
        network, feature_dim, how = _timm_network(name, kwargs, in_channels)
    elif source == "torchvision":
        network, feature_dim, how = _torchvision_network(name, kwargs, in_channels)
    else:
        network, feature_dim, how = _python_network(name, kwargs, num_classes)
    body: nn.Module = network
    if feature_dim is None:
        attribute = _classifier_attribute(network)
        classifier = attribute[0] if attribute else None
        if input_shape is not None:  # probed before anything is replaced
            classifier, _ = verified_classifier(arch, network, _probe_batch(input_shape), classifier, keep_head=False)
        if attribute is not None and attribute[0] is classifier:
            attribute[2]()
            feature_dim, how = attribute[0].in_features, f"{attribute[1]} replaced by Identity"
        else:
            body = LastLinearFeatures(network, classifier)
            feature_dim = body.classifier.in_features
            how = "the nn.Linear its forward calls last (hook; verified to be the last operation)"
    declared = declared_normalisation(network, in_channels)
    if declared is not None and user_normalisation:
        log.info("%s: inputs normalised with the given --mean %s and --std %s (the model declares %s and %s)",
                 arch, list(mean), list(std), [round(m, 4) for m in declared[0]], [round(v, 4) for v in declared[1]])
    elif declared is not None:
        mean, std = declared
        log.info("%s: inputs normalised with the mean %s and std %s the model declares", arch,
                 [round(m, 4) for m in mean], [round(v, 4) for v in std])
    model = ImageClassifier(body, feature_dim, num_classes, mean, std)
    if input_shape is not None:
        _check_features(arch, model, input_shape)
    log.info("%s: classifier removed (%s); a new head Linear(%d, %d) for the dataset's classes", arch, how,
             feature_dim, num_classes)
    return model


def _check_features(arch: str, model: nn.Module, input_shape: Sequence[int]) -> None:
    """The body must map images to (B, feature_dim) in eval *and* train mode: anything else means
    the classifier was not the network's last operation, the network returns something else while
    training (GoogLeNet's auxiliary logits), or the image size does not suit it. The train-mode
    check runs on a copy, so the model's BatchNorm statistics are not touched."""
    import copy

    for training in (False, True):
        probe = copy.deepcopy(model) if training else model
        was_training = probe.training
        probe.train(training)
        try:
            with torch.no_grad():
                features = probe.forward_features(torch.rand(2, *input_shape))
        except (RuntimeError, AssertionError, ValueError) as exc:  # timm asserts input sizes; torch raises shape errors
            raise ConfigError(f"{arch} cannot run on {tuple(input_shape)} images "
                              f"({' '.join(str(exc).split())[:160]})") from None
        finally:
            probe.train(was_training)
        mode = "in train mode" if training else "in eval mode"
        if not isinstance(features, torch.Tensor):
            raise ConfigError(f"{arch}: without its classifier it returns a {type(features).__name__} {mode}, not a "
                              "tensor of features (auxiliary outputs?); it cannot be fine-tuned as one classifier")
        if features.dim() != 2 or features.shape[1] != model.feature_dim:
            raise ConfigError(f"{arch}: without its classifier it returns {tuple(features.shape)} {mode}, not (batch, "
                              f"{model.feature_dim}) features; its classifier is not its last operation")
