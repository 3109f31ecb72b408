"""Architectures. Every public module here registers its builders in MODELS when imported."""
from ..registry import import_submodules
from ._base import ImageClassifier, Normalize, build_model

import_submodules(__name__)

__all__ = ["ImageClassifier", "Normalize", "build_model"]
