"""What the wheel ships: setup.cfg lists its packages by hand (baselines/ is mapped into the package),
so every package folder of the tree must be in that list, or the installed wheel cannot import it."""
import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_in_setup_cfg():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = {line.strip() for line in config["options"]["packages"].splitlines() if line.strip()}
    found = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "robustbench_aft").rglob("__init__.py")
             if "resources" not in init.parts}
    assert found <= listed, f"package folders missing from setup.cfg [options] packages: {sorted(found - listed)}"
    mapped = {line.split("=")[0].strip() for line in config["options"]["package_dir"].splitlines() if "=" in line}
    assert mapped <= listed
