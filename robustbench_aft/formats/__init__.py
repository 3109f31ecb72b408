"""Registered output formats, one file each: md, csv, json (``--format``).

An :class:`OutputFormat` renders plain tables (rows of dicts) and leaderboards (the aggregated
frame of :mod:`..tables`); every sub-command's ``--format`` takes its choices from the
registry, so a new format is one new file with one ``@FORMATS.register`` line.
"""
from ..registry import import_submodules
from ._base import OutputFormat

import_submodules(__name__)

__all__ = ["OutputFormat"]
