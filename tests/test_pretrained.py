"""Natural pre-training, the cache, and every checkpoint source with its error paths."""
import importlib.metadata

import pytest
import torch

from robustbench_aft.errors import CheckpointError, DependencyError
from robustbench_aft.models import build_model
from robustbench_aft.pretrained import (
    NaturalRecipe,
    cache_path,
    default_recipe,
    load_checkpoint,
    resolve,
    save_checkpoint,
)

CPU = torch.device("cpu")


def test_smallcnn_reaches_95_percent_on_digits_and_records_its_cost(digits, digits_natural):
    # The session's cached natural model (conftest.py), trained by `pretrain` with the default recipe;
    # its checkpoint keeps the accuracy and cost that pretrain measured. How long that took depends on
    # the machine, so only its consistency is checked: the recorded rate times the recorded time is
    # every training image once per epoch.
    _, info = digits_natural
    measured = info["metadata"]
    recipe = default_recipe(digits)
    print(f"natural smallcnn on digits: {measured['test_accuracy']:.2f}% test accuracy in {measured['seconds']:.1f} s")
    assert info["source"] == str(cache_path(digits, "smallcnn", 0, recipe))
    assert measured["test_accuracy"] >= 95.0
    assert measured["seconds"] > 0
    images = measured["images_per_second"] * measured["seconds"]
    assert images == pytest.approx(recipe.epochs * len(digits.train), rel=1e-6)


def test_pretraining_warns_nothing_where_the_progress_bar_reads_the_loss(digits, monkeypatch):
    # Batch 16 reaches the log interval (every 25th batch) inside one epoch of digits, where the bar
    # reads the loss; reading a tensor that still needs its gradient warned on every such read.
    import warnings

    import robustbench_aft.engine as engine
    from robustbench_aft.pretrained import pretrain

    assert len(digits.train) // 16 > engine.LOG_INTERVAL
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, info = pretrain(digits, "tinycnn", NaturalRecipe(epochs=1, batch_size=16, lr=0.05), seed=0, device=CPU,
                           progress=True)
    assert info["seconds"] > 0


def test_auto_pretrains_once_then_loads_from_cache(digits):
    recipe = NaturalRecipe(epochs=1, batch_size=128, lr=0.05)
    path = cache_path(digits, "smallcnn", 5, recipe)
    assert not path.exists()
    first, info = resolve("auto", digits, "smallcnn", seed=5, device=CPU, recipe=recipe, progress=False)
    assert path.is_file() and info["source"] == str(path)
    mtime = path.stat().st_mtime_ns
    second, _ = resolve("auto", digits, "smallcnn", seed=5, device=CPU, recipe=recipe, progress=False)
    assert path.stat().st_mtime_ns == mtime
    for (k, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), k
    assert cache_path(digits, "smallcnn", 5, NaturalRecipe(epochs=2)) != path


def _logits(model, digits):
    x = torch.stack([digits.test[i][0] for i in range(16)])
    with torch.no_grad():
        return model.eval()(x)


def test_plain_and_dataparallel_state_dicts_load(digits_model, digits, tmp_path):
    expected = _logits(digits_model, digits)
    plain = tmp_path / "plain.pth"
    torch.save(digits_model.state_dict(), plain)
    wrapped = tmp_path / "dp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in digits_model.state_dict().items()}}, wrapped)
    ours = save_checkpoint(digits_model, tmp_path / "ours.pt", "smallcnn", digits, note="test")
    for path in (plain, wrapped, ours):
        model, _ = resolve(str(path), digits, "smallcnn", seed=0, device=CPU)
        torch.testing.assert_close(_logits(model, digits), expected)


def test_checkpoint_errors_name_the_problem(digits_model, digits, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing.pt"), digits, "smallcnn")

    good = tmp_path / "good.pt"
    torch.save(digits_model.state_dict(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or not a torch checkpoint"):
        load_checkpoint(str(truncated), digits, "smallcnn")

    renamed = {k.replace("head.", "classifier."): v for k, v in digits_model.state_dict().items()}
    torch.save(renamed, tmp_path / "renamed.pt")
    with pytest.raises(CheckpointError, match=r"missing keys: head\.weight, head\.bias; unexpected keys: classifier\."):
        load_checkpoint(str(tmp_path / "renamed.pt"), digits, "smallcnn")

    other = build_model("smallcnn", 3, 1, [0.5], [0.25])
    torch.save(other.state_dict(), tmp_path / "three.pt")
    with pytest.raises(CheckpointError, match="has 3 classes but dataset digits has 10"):
        load_checkpoint(str(tmp_path / "three.pt"), digits, "smallcnn")

    ours = save_checkpoint(digits_model, tmp_path / "ours.pt", "smallcnn", digits)
    with pytest.raises(CheckpointError, match="saved for arch 'smallcnn', not 'resnet18'"):
        load_checkpoint(str(ours), digits, "resnet18")

    torch.save({"epoch": 3}, tmp_path / "nostate.pt")
    with pytest.raises(CheckpointError, match="holds no state_dict"):
        load_checkpoint(str(tmp_path / "nostate.pt"), digits, "smallcnn")


def _robustbench_distribution_installed() -> bool:
    try:
        importlib.metadata.version("robustbench")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(_robustbench_distribution_installed(),
                    reason="the zoo extra is installed; this checks the message shown without it")
def test_robustbench_source_without_the_zoo_extra_says_how_to_install(digits):
    # Holds both with nothing installed and with torchattacks' vendored copy importable.
    with pytest.raises(DependencyError, match=r"pip install 'robustbench-aft\[zoo\]'"):
        resolve("robustbench:Standard", digits, "wrn-28-10", seed=0, device=CPU)
