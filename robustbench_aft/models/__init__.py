"""Architectures. Every public module here registers its builders in MODELS when imported."""
from ..registry import import_submodules
from ._base import ImageClassifier, Normalize, build_model, canonical_arch
from .external import adapt

import_submodules(__name__)

__all__ = ["ImageClassifier", "Normalize", "adapt", "build_model", "canonical_arch"]
