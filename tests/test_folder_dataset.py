"""``folder:PATH`` trees with images that cannot be read, and with fewer than two classes."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Sequence

import pytest

from robustbench_aft.cli import main
from robustbench_aft.data import load_dataset
from robustbench_aft.errors import ConfigError


def make_tree(root: Path, classes: Sequence[str] = ("cat", "dog"), per_class: int = 3,
              test_classes: Sequence[str] = ()) -> Path:
    """A tiny ImageFolder tree of 8×8 PNGs: root/{train,test}/<class>/<i>.png."""
    from PIL import Image

    for split, names in (("train", classes), ("test", test_classes or classes)):
        for k, name in enumerate(names):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", (8, 8), (40 * k, 10 * i, 90)).save(root / split / name / f"{i}.png")
    return root


def spoil(root: Path) -> Dict[str, Path]:
    """Three bad images of three kinds: not an image at all, a truncated JPEG, a truncated PNG."""
    from PIL import Image

    garbage = root / "train" / "cat" / "garbage.jpg"
    garbage.write_bytes(b"this is not an image")
    jpeg = root / "train" / "dog" / "half.jpg"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(jpeg, quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    png = root / "test" / "dog" / "half.png"
    png.write_bytes((root / "test" / "dog" / "0.png").read_bytes()[:40])
    return {"garbage": garbage, "jpeg": jpeg, "png": png}


def test_a_bad_image_is_one_line_naming_it_and_counting_the_others(tmp_path):
    root = make_tree(tmp_path / "tree")
    bad = spoil(root)
    with pytest.raises(ConfigError) as error:
        load_dataset(f"folder:{root}")
    message = str(error.value)
    assert "\n" not in message
    assert f"cannot read {bad['garbage']} (not an image file Pillow can identify)" in message
    assert f"2 other images under {root} are bad too" in message and "--skip-bad-images" in message


def test_one_bad_image_says_it(tmp_path):
    root = make_tree(tmp_path / "tree")
    (root / "test" / "cat" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ConfigError, match=r"cannot read .*x\.png .*; fix or remove it, or pass --skip-bad-images"):
        load_dataset(f"folder:{root}")


def test_a_later_load_decodes_only_the_images_that_changed(tmp_path, monkeypatch):
    """The scan is kept in the cache folder: a second load (another process, a later run) decodes
    nothing, and an image rewritten since is decoded again, so a file spoilt later is still caught."""
    from robustbench_aft.datasets import folder as folder_module

    root = make_tree(tmp_path / "tree")
    decoded = []
    decode = folder_module._why_unreadable
    monkeypatch.setattr(folder_module, "_why_unreadable", lambda path: decoded.append(path) or decode(path))
    load_dataset(f"folder:{root}")
    assert len(decoded) == 12  # 2 classes × 3 images × 2 splits
    assert folder_module.scan_record(root).is_file()
    decoded.clear()
    load_dataset(f"folder:{root}")
    assert decoded == []
    victim = root / "test" / "dog" / "1.png"
    victim.write_bytes(victim.read_bytes()[:40])
    with pytest.raises(ConfigError, match=r"cannot read .*1\.png"):
        load_dataset(f"folder:{root}")
    assert decoded == [str(victim)]
    folder_module.scan_record(root).write_text("{not json")  # a spoilt record only costs a decode
    decoded.clear()
    with pytest.raises(ConfigError, match=r"cannot read .*1\.png"):
        load_dataset(f"folder:{root}")
    assert len(decoded) == 12


def test_bad_images_are_skipped_on_request_and_counted(tmp_path, caplog):
    root = make_tree(tmp_path / "tree")
    bad = spoil(root)
    with caplog.at_level(logging.WARNING):
        data = load_dataset(f"folder:{root}", skip_bad_images=True)
    assert data.metadata["skipped_bad_images"] == {"train": 2, "test": 1}
    assert (len(data.train), len(data.test)) == (6, 6)
    read = {path for path, _ in data.train.base.samples} | {path for path, _ in data.test.base.samples}
    assert not read & {str(p) for p in bad.values()}
    assert all(data.train[i][0].shape == (3, 8, 8) for i in range(len(data.train)))
    assert "left out 3 image(s)" in caplog.text
    assert load_dataset(f"folder:{make_tree(tmp_path / 'clean')}").metadata["skipped_bad_images"] == \
        {"train": 0, "test": 0}


def test_a_single_class_tree_is_refused(tmp_path):
    root = make_tree(tmp_path / "one", classes=("cat",))
    with pytest.raises(ConfigError, match=r"one/train has 1 class folder\(s\) with images \(cat\); a classifier "
                                          "needs at least two") as error:
        load_dataset(f"folder:{root}")
    assert "\n" not in str(error.value)


def test_a_split_left_with_one_class_after_skipping_is_refused(tmp_path):
    root = make_tree(tmp_path / "tree", per_class=1)
    (root / "test" / "dog" / "0.png").write_bytes(b"broken")
    with pytest.raises(ConfigError, match=r"test has 1 class folder\(s\) with images left after skipping 1 bad"):
        load_dataset(f"folder:{root}", skip_bad_images=True)


def test_any_dataset_with_one_class_is_refused():
    import dataclasses

    from robustbench_aft.registry import DATASETS

    digits = DATASETS.get("digits")
    DATASETS.register("onedigit")(lambda options: dataclasses.replace(digits(options), num_classes=1,
                                                                       class_names=["0"]))
    try:
        with pytest.raises(ConfigError, match=r"dataset onedigit has 1 class\(es\) \(0\); a classifier needs "
                                              "at least two"):
            load_dataset("onedigit")
    finally:
        DATASETS.unregister("onedigit")


@pytest.mark.parametrize("kind", ["bad image", "one class"])
def test_bench_run_refuses_in_one_line(tmp_path, capsys, kind):
    root = make_tree(tmp_path / "tree", classes=("cat",) if kind == "one class" else ("cat", "dog"))
    if kind == "bad image":
        spoil(root)
    code = main(["run", "--methods", "vaft", "--arch", "tinycnn", "--dataset", f"folder:{root}", "--quiet",
                 "--db", str(tmp_path / "r.db"), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench: error: folder dataset: "), captured.err
    assert ("cannot read" if kind == "bad image" else "a classifier needs at least two") in lines[0]
    assert not (tmp_path / "r.db").exists()
