"""Atomic writes (files.py): a file written through the atomic path gets the mode ``open()`` would give."""
import os
import stat

import pytest
import torch

from robustbench_aft.files import atomic_torch_save, atomic_write_text


@pytest.fixture
def umask():
    """Set the process umask for one test and restore the previous one afterwards."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600), (0o027, 0o640)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    text = atomic_write_text("x\n", tmp_path / "table.csv")
    saved = atomic_torch_save({"a": torch.zeros(1)}, tmp_path / "sub" / "model.pt")
    for path in (text, saved):
        assert stat.S_IMODE(os.stat(path).st_mode) == expected, path
    # Nothing is left behind next to the target: the temporary file was renamed onto it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub", "table.csv"]


def test_a_failed_write_keeps_the_previous_version_and_leaves_no_temporary(tmp_path, umask):
    from robustbench_aft.files import atomic_write

    target = tmp_path / "results.csv"
    atomic_write_text("old\n", target)

    def fail(tmp: str) -> None:
        with open(tmp, "w") as handle:
            handle.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["results.csv"]
