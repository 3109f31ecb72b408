"""Registered datasets, one file each: digits, cifar10/cifar100, tinyimagenet, folder:PATH
(``bench list datasets``). The contract (DataBundle, DataOptions) and the shared transforms are in
:mod:`..data`; every public module here is imported, so a new dataset is one new file with one
``@DATASETS.register`` line."""
from ..registry import import_submodules

import_submodules(__name__)
