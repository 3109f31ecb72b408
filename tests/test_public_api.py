"""The public API: every name of ``robustbench_aft.__all__`` stays what it is, however the package's
modules are imported afterwards (a submodule of the same name once replaced ``leaderboard``)."""
import importlib
import pkgutil
import types

import robustbench_aft as rb


def test_leaderboard_is_callable_twice_through_the_package(tmp_path, digits_natural):
    from robustbench_aft.config import build_run_config

    summary = rb.run(build_run_config(["vaft"], train_overrides={"epochs": 1, "feature_gap_probe": 0},
                                      eval_overrides={"attacks": ["clean"], "n_eval": 20},
                                      db=str(tmp_path / "r.db"), out=str(tmp_path / "out")), progress=False)
    first = rb.leaderboard(summary.db)
    second = rb.leaderboard(summary.db)
    assert list(first["method"]) == list(second["method"]) == ["natural", "vaft"]
    assert first["clean"].tolist() == second["clean"].tolist()


def test_no_public_name_is_shadowed_by_a_submodule():
    for module in pkgutil.walk_packages(rb.__path__, prefix="robustbench_aft."):
        if not module.name.endswith("__main__"):  # `python -m robustbench_aft.cli` would run the CLI
            importlib.import_module(module.name)
    public = [name for name in rb.__all__ if name != "__version__"]
    modules = [name for name in public if isinstance(getattr(rb, name), types.ModuleType)]
    assert not modules, f"public names that are modules now: {modules}"
    submodules = {module.name.rsplit(".", 1)[-1] for module in pkgutil.iter_modules(rb.__path__)}
    assert not set(public) & submodules, "a public function shares its name with a submodule"
