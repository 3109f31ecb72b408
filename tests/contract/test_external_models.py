"""Fine-tune your own model: timm, torchvision and py: networks hold the classifier contract, pass
every method's one-step contract, and what cannot hold is refused in one line."""
import pytest
import torch
from torch import nn

from robustbench_aft.attacks import PGD
from robustbench_aft.engine import check_method_fits
from robustbench_aft.errors import ConfigError
from robustbench_aft.models import ImageClassifier, build_model, canonical_arch
from robustbench_aft.registry import METHODS

from ..conftest import write_image_folder

pytest.importorskip("timm")  # the timm extra; part of [dev], so CI always has it

FACTORIES = "py:tests.contract.external_factories"
EXTERNAL = ["timm:resnet18", "timm:vit_tiny_patch16_224[img_size=32]", "timm:mobilenetv3_small_100",
            "torchvision:resnet18", "torchvision:mobilenet_v3_small", f"{FACTORIES}:tiny_cnn",
            f"{FACTORIES}:unnamed_head"]
SHAPE = (3, 32, 32)


def build(arch: str, num_classes: int = 7) -> ImageClassifier:
    torch.manual_seed(0)
    return build_model(arch, num_classes, 3, [0.5] * 3, [0.25] * 3, SHAPE)


@pytest.mark.parametrize("arch", EXTERNAL)
def test_external_model_holds_the_classifier_contract(arch):
    model = build(arch).eval()
    x = torch.rand(3, *SHAPE)
    with torch.no_grad():
        logits, features = model(x), model.forward_features(x)
    assert logits.shape == (3, 7) and features.shape == (3, model.feature_dim)
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 7
    torch.testing.assert_close(model.head(features), logits)


@pytest.mark.parametrize("arch", EXTERNAL)
def test_attack_restores_the_mode_and_a_checkpoint_round_trips(arch, tmp_path):
    from robustbench_aft.data import DataBundle
    from robustbench_aft.pretrained import load_checkpoint, save_checkpoint

    model = build(arch, num_classes=10).train()
    x, y = torch.rand(2, *SHAPE), torch.tensor([1, 2])
    PGD(8 / 255, steps=2)(model, x, y)
    assert model.training
    data = DataBundle(name="folder:x", key="x", train=None, test=None, num_classes=10, input_shape=SHAPE,
                      mean=(0.5,) * 3, std=(0.25,) * 3, default_eps=8 / 255, class_names=[str(i) for i in range(10)])
    save_checkpoint(model, tmp_path / "m.pt", arch, data)
    loaded, _ = load_checkpoint(str(tmp_path / "m.pt"), data, arch)
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_arch_strings_are_canonical_with_sorted_keyword_arguments():
    assert canonical_arch("timm:vit_tiny_patch16_224[patch_size=8,img_size=32]") == \
        "timm:vit_tiny_patch16_224[img_size=32,patch_size=8]"
    assert canonical_arch("torchvision:resnet18") == "torchvision:resnet18"


@pytest.mark.parametrize("arch, message", [
    (f"{FACTORIES}:scaled_logits", r"its classifier out Linear\(8, 7\) is not the last operation of its forward: "
                                   r"Tensor.mul \(a \* in its forward\) runs on its output"),
    (f"{FACTORIES}:not_a_module", "returned a str, not an nn.Module"),
    ("py:tests.contract.no_such_module:f", "cannot import it"),
    ("timm:resnet181", "timm:resnet181 is not a timm model. Did you mean resnet18"),
    ("torchvision:resnet181", "torchvision:resnet181 is not a torchvision model. Did you mean resnet18"),
    ("timm:resnet18[pretrained=True]", "needs the model hub"),
    ("timm:swin_tiny_patch4_window7_224", r"cannot run on \(3, 32, 32\) images"),
    ("torchvision:googlenet", "returns a GoogLeNetOutputs in train mode"),
    ("torchvision:squeezenet1_0", "no nn.Linear classifier layer"),
    ("torchvision:resnet18[weights=DEFAULT]", "needs a download"),
])
def test_what_cannot_be_adapted_is_one_line(arch, message):
    with pytest.raises(ConfigError, match=message) as error:
        build(arch)
    assert "\n" not in str(error.value)


def test_torchvision_on_single_channel_images_is_refused():
    with pytest.raises(ConfigError, match="takes 3-channel images; this dataset has 1"):
        build_model("torchvision:resnet18", 10, 1, [0.5], [0.25], (1, 8, 8))


def test_twins_refuses_a_network_without_batchnorm_before_any_work():
    vit = build("timm:vit_tiny_patch16_224[img_size=32]")
    with pytest.raises(ConfigError, match="twins-at cannot fine-tune timm:vit.*no BatchNorm2d"):
        check_method_fits("twins-at", vit, "timm:vit_tiny_patch16_224[img_size=32]")
    check_method_fits("twins-at", build("timm:resnet18"), "timm:resnet18")
    check_method_fits("afd", vit, "vit")


@pytest.fixture(scope="module")
def timm_resnet():
    return build("timm:resnet18", num_classes=10).eval()


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_takes_one_step_on_a_timm_resnet(name, timm_resnet):
    torch.manual_seed(0)
    x, y = torch.rand(8, *SHAPE), torch.arange(8) % 10
    method = METHODS.get(name)(eps=8 / 255)
    method.prepare(timm_resnet)
    method.optimizers = method.configure_optimizers()
    dataset = torch.utils.data.TensorDataset(x, y, torch.arange(8))
    method.on_fit_start(dataset)
    method.on_epoch_start(1, 20)
    method.train()
    before = {k: v.clone() for k, v in method.trainable_state().state_dict().items()}
    terms = method.update((x, y, torch.arange(8)))
    assert all(torch.isfinite(value) for value in terms.values()), terms
    assert any(v.is_floating_point() and not torch.equal(v, before[k])
               for k, v in method.trainable_state().state_dict().items())
    exported = method.export().eval()
    with torch.no_grad():
        assert exported(x).shape == (8, 10)


@pytest.mark.slow
def test_bench_run_fine_tunes_a_timm_model_end_to_end(tmp_path, capsys):
    import pandas as pd

    from robustbench_aft.cli import main

    tree = write_image_folder(tmp_path / "images", size=24)
    dataset = f"folder:{tree}"
    db = tmp_path / "r.db"
    assert main(["run", "--methods", "ours,vaft", "--arch", "timm:resnet18", "--dataset", dataset, "--image-size", "32",
                 "--natural-epochs", "2", "--epochs", "1", "--batch-size", "12", "--val-size", "6",
                 "--attacks", "clean,pgd", "--db", str(db), "--out", str(tmp_path / "out"), "--quiet",
                 "--format", "csv"]) == 0
    import io

    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(table["method"]) == ["natural", "afd", "vaft"]
    assert set(table["arch"]) == {"timm:resnet18"} and set(table["dataset"]) == {f"{dataset}@32px"}
    # The exported checkpoint, evaluated on its own, gives the stored clean accuracy.
    assert main(["eval", "--checkpoint", str(tmp_path / "out" / "afd-seed0" / "final.pt"), "--arch", "timm:resnet18",
                 "--dataset", dataset, "--image-size", "32", "--attacks", "clean", "--format", "csv", "--quiet"]) == 0
    evaluated = pd.read_csv(io.StringIO(capsys.readouterr().out))
    clean = float(evaluated.set_index("attack").loc["clean", "accuracy"])
    assert clean == pytest.approx(float(table.set_index("method").loc["afd", "clean"]), abs=1e-6)


def test_a_trained_module_is_adapted_with_its_own_head_and_fine_tuned(digits):
    import copy

    from robustbench_aft.config import TrainConfig
    from robustbench_aft.engine import fine_tune
    from robustbench_aft.models import adapt

    torch.manual_seed(0)
    mine = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    network = nn.Module()
    network.features, network.fc = mine, nn.Linear(8, 10)
    network.forward = lambda x: network.fc(network.features(x))
    original = copy.deepcopy(network.fc)
    x = torch.rand(4, 1, 8, 8)
    expected = network(x)
    model = adapt(network, (1, 8, 8))
    torch.testing.assert_close(model(x), expected)  # same function, its head kept
    assert torch.equal(model.head.weight, original.weight)
    tuned = fine_tune("vaft", model, digits, TrainConfig(epochs=1, batch_size=64, train_subset=64, val_size=32),
                      eps=0.15, seed=0, device=torch.device("cpu"), progress=False)
    assert not torch.equal(tuned.model.head.weight, original.weight)


def test_timm_models_normalise_with_the_statistics_they_declare():
    import timm

    declared = timm.create_model("resnet18", pretrained=False).pretrained_cfg
    model = build("timm:resnet18")
    torch.testing.assert_close(model.normalize.mean.flatten(), torch.tensor(declared["mean"], dtype=torch.float32))
    torch.testing.assert_close(model.normalize.std.flatten(), torch.tensor(declared["std"], dtype=torch.float32))
    # torchvision declares nothing: the dataset's statistics.
    torch.testing.assert_close(build("torchvision:resnet18").normalize.mean.flatten(), torch.full((3,), 0.5))
    # --mean/--std win over what the model declares: the user knows what their weights expect.
    given = build_model("timm:resnet18", 10, 3, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), (3, 32, 32), user_normalisation=True)
    torch.testing.assert_close(given.normalize.mean.flatten(), torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(given.normalize.std.flatten(), torch.tensor([0.4, 0.5, 0.6]))


def test_mean_and_std_make_a_dataset_of_its_own(digits, capsys, tmp_path, monkeypatch):
    from robustbench_aft.cli import main
    from robustbench_aft.data import load_dataset, with_input_options

    spec = with_input_options("digits@16px", None, "0.5", "0.25")
    assert spec == "digits@16px@mean=0.5@std=0.25"
    renormalised = load_dataset(spec)
    assert renormalised.mean == (0.5,) and renormalised.std == (0.25,) and renormalised.user_normalisation
    assert renormalised.input_shape == (1, 16, 16) and renormalised.key != load_dataset("digits@16px").key
    assert with_input_options(spec, None, "0.3") == "digits@16px@mean=0.3@std=0.25"  # a flag replaces its suffix
    # The stored statistics are the ones the model uses: a checkpoint carries them.
    monkeypatch.setenv("ROBUSTBENCH_AFT_CACHE", str(tmp_path))
    assert main(["pretrain", "--dataset", "digits", "--arch", "smallcnn", "--epochs", "1", "--mean", "0.5",
                 "--std", "0.25", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "digits@mean=0.5@std=0.25" in out
    state = torch.load(out.split("saved: ")[1].strip(), weights_only=False)["state_dict"]
    assert float(state["normalize.mean"].flatten()[0]) == 0.5 and float(state["normalize.std"].flatten()[0]) == 0.25


def test_image_size_makes_a_dataset_of_its_own(digits):
    from robustbench_aft.data import InputOptions, load_dataset, split_input_options, with_input_options

    assert with_input_options("folder:/x/y", 32) == "folder:/x/y@32px"
    assert split_input_options("digits@16px") == ("digits", InputOptions(image_size=16))
    assert split_input_options("folder:/me@home/data") == ("folder:/me@home/data", InputOptions())
    resized = load_dataset(with_input_options("digits", 16))
    assert resized.name == "digits@16px" and resized.input_shape == (1, 16, 16) and resized.key != digits.key
    image, label, index = resized.test[5]
    assert image.shape == (1, 16, 16) and label == digits.test[5][1] and index == 5
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    # The same picture with more pixels: downsampled back, it correlates strongly with the original.
    back = torch.nn.functional.interpolate(image[None], size=(8, 8), mode="bilinear", antialias=True)[0]
    assert float(torch.corrcoef(torch.stack([back.flatten(), digits.test[5][0].flatten()]))[0, 1]) > 0.9
