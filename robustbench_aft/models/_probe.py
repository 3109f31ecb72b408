"""One forward pass of a user's network on a probe batch, watched: which ``nn.Linear`` it calls
last, what it returns, and which operation (if any) changes the classifier's output on its way
to the network's output.

The adapter (:mod:`.external`) splits a network into features and a linear head. That split is
only right if the classifier it found is the last operation of the forward; a LogSoftmax or a
temperature after it would otherwise end up in front of the new head, silently. Registration
order (``modules()``) says nothing about the forward, so the forward itself is watched:

* forward hooks on every sub-module record the order in which the forward calls them;
* a ``TorchFunctionMode`` sees every tensor operation, also the functional ones
  (``logits / T``) that no module hook can;
* every tensor computed from the classifier's output carries the first operation that changed
  its values (a view, ``Dropout`` in eval mode or ``.contiguous()`` do not), so the message names
  the operation on the path to the output rather than an unrelated one that merely read it.

Only the lineage of the latest call of the watched Linear(s) is kept (each new call starts it
afresh), so a transformer's many Linears cost a few small tensors at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

# Operator methods shown as the expression a user wrote.
_OPERATORS = {"mul": "*", "__mul__": "*", "__rmul__": "*", "div": "/", "__truediv__": "/", "__rtruediv__": "/",
              "add": "+", "__add__": "+", "__radd__": "+", "sub": "-", "__sub__": "-", "__rsub__": "-",
              "div_": "/=", "__itruediv__": "/=", "mul_": "*=", "__imul__": "*=", "add_": "+=", "sub_": "-="}


def describe_function(func: Any) -> str:
    """``torch.nn.functional.log_softmax``, ``Tensor.div`` (a division ``/``) and the like."""
    name = getattr(func, "__name__", None) or repr(func)
    qualified = getattr(func, "__qualname__", None) or name
    module = getattr(func, "__module__", None)
    if qualified.startswith(("TensorBase.", "_TensorBase.")) or module is None:
        text = "Tensor." + qualified.split(".", 1)[-1]
        return f"{text} (a {_OPERATORS[name]} in its forward)" if name in _OPERATORS else f"{text} in its forward"
    return f"{module.replace('torch._C._nn', 'torch.nn.functional')}.{name} in its forward"


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


@dataclass
class _Node:
    """A tensor computed from the watched Linear's latest output."""

    tensor: torch.Tensor
    version: int
    # (kind, text) of the first operation that changed the values on the way here; kind is
    # "module" or "function" (a module's name wins over the functions it runs).
    change: Optional[Tuple[str, str]]


@dataclass
class ForwardProbe:
    """What one forward pass showed.

    Attributes:
        output: what the network returned.
        classifier: the watched Linear that the forward called last (None: it called none).
        classifier_name: its qualified name in the network (``fc``, ``head.1``).
        classifier_output: a copy of what it returned then.
        follower: the first operation that changed its output on the way to the network's output
            (``post (LogSoftmax)``, ``Tensor.div (a / in its forward)``), when the output comes
            from it; None when nothing did or the output does not come from it.
        from_classifier: whether the network's output is computed from that output at all.
    """

    output: Any
    classifier: Optional[nn.Linear]
    classifier_name: str
    classifier_output: Optional[torch.Tensor]
    follower: Optional[str]
    from_classifier: bool

    def output_is_classifier_output(self) -> bool:
        """The network returns exactly what its classifier returned (up to float tolerance)."""
        out, ref = self.output, self.classifier_output
        return (isinstance(out, torch.Tensor) and ref is not None and out.shape == ref.shape
                and bool(torch.allclose(out.float(), ref.float(), atol=1e-5, rtol=1e-4)))

    def what_follows(self) -> str:
        """The operation between the classifier and the output, in words, for error messages."""
        if self.follower:
            return self.follower
        if not self.from_classifier:
            return "nothing computed from it (the forward returns something else)"
        return "an operation in its forward that changes it"


class _Watch(TorchFunctionMode):
    def __init__(self, network: nn.Module, targets: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.names = {module: name for name, module in network.named_modules() if name}
        self.targets = set(targets)
        self.nodes: Dict[int, _Node] = {}
        self.last: Optional[Tuple[nn.Linear, torch.Tensor]] = None
        self.stack: List[Tuple[nn.Module, List[Tuple[torch.Tensor, int]]]] = []
        self.busy = False  # our own tensor operations must not be watched

    def describe(self, module: nn.Module) -> str:
        return f"{self.names.get(module, '?')} ({type(module).__name__})"

    def _inputs(self, value: Any) -> List[Tuple[torch.Tensor, _Node]]:
        return [(t, self.nodes[id(t)]) for t in _tensors(value) if id(t) in self.nodes
                and self.nodes[id(t)].tensor is t]

    def _derive(self, result: Any, inputs: List[Tuple[torch.Tensor, _Node]], versions: List[int],
                change: Tuple[str, str]) -> None:
        """Track ``result`` as computed from ``inputs``; ``change`` is what to blame if its values differ."""
        if not isinstance(result, torch.Tensor) or not inputs:
            return
        source, node = inputs[0]
        changed_in_place = any(t._version != v for (t, _), v in zip(inputs, versions))
        same = (not changed_in_place and result.shape == source.shape and result.dtype == source.dtype
                and bool(torch.equal(result, source)))
        inherited = node.change
        known = self.nodes.get(id(result))
        if inherited is None and not same:
            inner = known.change if known is not None and known.tensor is result else None
            # A module's name beats the functions it ran (LogSoftmax over log_softmax), and an
            # inner module's beats its container's (post.0 (LogSoftmax) over post (Sequential)).
            inherited = inner if inner is not None and (inner[0] == "module" or change[0] == "function") else change
        self.nodes[id(result)] = _Node(result, result._version, inherited)

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.busy or not self.nodes:
            return func(*args, **kwargs)
        self.busy = True
        try:
            inputs = self._inputs((args, kwargs))
            versions = [t._version for t, _ in inputs]
        finally:
            self.busy = False
        result = func(*args, **kwargs)
        if inputs:
            self.busy = True
            try:
                self._derive(result, inputs, versions, ("function", describe_function(func)))
            finally:
                self.busy = False
        return result

    def pre_hook(self, module: nn.Module, args: Any) -> None:
        if self.busy:
            return
        self.busy = True
        try:
            self.stack.append((module, [(t, t._version) for t, _ in self._inputs(args)]))
        finally:
            self.busy = False

    def post_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.busy:
            return
        self.busy = True
        try:
            _, entered = self.stack.pop() if self.stack else (module, [])
            if module in self.targets and isinstance(output, torch.Tensor):
                # A new call of a watched Linear: only what follows its latest call matters.
                self.nodes = {id(output): _Node(output, output._version, None)}
                self.last = (module, output.detach().clone())
                return
            still = [(t, v) for t, v in entered if id(t) in self.nodes and self.nodes[id(t)].tensor is t]
            self._derive(output, [(t, self.nodes[id(t)]) for t, _ in still], [v for _, v in still],
                         ("module", self.describe(module)))
        finally:
            self.busy = False


def probe_forward(network: nn.Module, x: torch.Tensor, targets: Optional[Sequence[nn.Linear]] = None) -> ForwardProbe:
    """Run ``network`` on ``x`` in eval mode without gradients, watching ``targets`` (default:
    every ``nn.Linear``); every module's train/eval flag is restored afterwards.

    Exceptions of the forward itself propagate (the caller turns them into a one-line error).
    """
    watched = list(targets) if targets is not None else [m for m in network.modules() if isinstance(m, nn.Linear)]
    watch = _Watch(network, watched)
    modes = {module: module.training for module in network.modules()}
    handles = []
    for module in network.modules():
        if module is not network:
            handles.append(module.register_forward_pre_hook(watch.pre_hook))
            handles.append(module.register_forward_hook(watch.post_hook))
    network.eval()
    try:
        with torch.no_grad(), watch:
            output = network(x)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    if watch.last is None:
        return ForwardProbe(output, None, "", None, None, False)
    classifier, copy = watch.last
    node = watch.nodes.get(id(output)) if isinstance(output, torch.Tensor) else None
    from_classifier = node is not None and node.tensor is output
    follower = node.change[1] if from_classifier and node.change else None
    return ForwardProbe(output, classifier, watch.names.get(classifier, "?"), copy, follower, from_classifier)
