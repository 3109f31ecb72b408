"""Architectures. Every public module here registers its builders in MODELS when imported.

Layers, lowest first: ``_base`` (the classifier contract, imports nothing of the package) and
``_probe``; ``external`` (timm/torchvision/py: adapters); ``factory`` (build by name); the
architecture files.
"""
from ..registry import import_submodules
from ._base import ImageClassifier, Normalize
from .external import adapt
from .factory import build_model, canonical_arch

import_submodules(__name__)

__all__ = ["ImageClassifier", "Normalize", "adapt", "build_model", "canonical_arch"]
