"""`python -m ich_keras` lists every command module, and only those."""

import importlib.util
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import ich_keras
from ich_keras.__main__ import COMMANDS


def test_the_listing_names_every_command_module_and_only_them():
    package = Path(ich_keras.__file__).parent
    runnable = {name for _, name, _ in pkgutil.iter_modules([str(package)])
                if re.search(r'^if __name__ == "__main__":', _source(package, name), re.M) and name != "__main__"}
    assert set(COMMANDS) == runnable - {"host_memory"}  # host_memory prints shell settings: no command of a run
    for verb in COMMANDS:
        assert importlib.util.find_spec(f"ich_keras.{verb}") is not None


def _source(package: Path, name: str) -> str:
    path = package / name / "__main__.py" if (package / name).is_dir() else package / f"{name}.py"
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def test_python_m_ich_keras_prints_the_verbs():
    listing = subprocess.run([sys.executable, "-m", "ich_keras"], capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert [line.split()[0] for line in listing.stdout.splitlines()[1:]] == list(COMMANDS)
