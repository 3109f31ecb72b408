import pytest

from robustbench_aft.errors import UnknownNameError
from robustbench_aft.registry import ATTACKS, DATASETS, METHODS, MODELS, Registry


def test_register_and_aliases_resolve_to_the_same_object():
    registry = Registry("widget")

    @registry.register("alpha", "a")
    class Alpha:
        """Alpha widget, first of its kind."""

    assert registry.get("alpha") is Alpha
    assert registry.get("a") is Alpha
    assert registry.get("  ALPHA ") is Alpha
    assert registry.canonical("a") == "alpha"
    assert registry.names() == ["alpha"]
    assert registry.entry("a").description == "Alpha widget, first of its kind."
    assert "a" in registry and "beta" not in registry


def test_duplicate_name_raises_naming_both_places():
    registry = Registry("widget")

    @registry.register("alpha")
    def first():
        pass

    with pytest.raises(ValueError) as info:
        @registry.register("beta", "alpha")
        def second():
            pass

    message = str(info.value)
    assert "duplicate widget name 'alpha'" in message
    assert message.count("test_registry.py:") == 2  # both definitions, file:line
    assert "beta" not in registry  # a failed registration registers nothing


def test_unknown_name_suggests_close_match_and_lists_all_in_one_line():
    registry = Registry("method")
    for name in ("trades", "mart", "afd"):
        registry.register(name)(lambda: None)
    with pytest.raises(UnknownNameError) as info:
        registry.get("tradez")
    message = str(info.value)
    assert "\n" not in message
    assert "Did you mean 'trades'?" in message
    assert message.endswith("Available: afd, mart, trades")


def test_names_must_be_lowercase():
    with pytest.raises(ValueError):
        Registry("widget").register("Alpha")


def test_builtin_components_are_discovered_without_a_list():
    assert {"smallcnn", "resnet18", "preactresnet18", "wrn-28-10", "wrn-34-10"} <= set(MODELS.names())
    assert {"digits", "cifar10", "cifar100", "tinyimagenet", "folder"} <= set(DATASETS.names())
    assert {"clean", "pgd", "cw", "aa", "aa-fast"} <= set(ATTACKS.names())
    assert METHODS.kind == "method"
