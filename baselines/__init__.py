"""Baseline AFT methods, one file each; installed as ``robustbench_aft.baselines``.

Every public module in this folder is imported here so that its ``@METHODS.register`` line runs.
Nothing else lists them.
"""
from robustbench_aft.registry import import_submodules

import_submodules(__name__)
