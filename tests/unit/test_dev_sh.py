"""dev.sh: it parses, and ``ensure_python`` installs what each command needs: the runtime packages for
``demo``, the test extras for ``test``, each once, again after a change of pyproject.toml.

The script runs in a copy of the repository's top level whose ``.venv/bin/python`` only writes down how it
was called, with stand-ins for the system tools ``test`` looks for: nothing is installed.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("redis-server", "redis-cli", "wrk", "valgrind", "nginx", "node", "npm", "chromium")
RECORDING_PYTHON = '#!/bin/sh\necho "$*" >> "$(dirname "$0")/../../calls.log"\n'


def _executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "dev.sh", tmp_path / "dev.sh")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    _executable(tmp_path / ".venv" / "bin" / "python", RECORDING_PYTHON)
    for tool in TOOLS:
        _executable(tmp_path / "bin" / tool, "#!/bin/sh\n")
    return tmp_path


def dev_sh(checkout: Path, command: str) -> list[str]:
    """Run ``dev.sh command``; the pip installs it made."""
    log = checkout / "calls.log"
    before = log.read_text().splitlines() if log.exists() else []
    env = {**os.environ, "PYTHON": sys.executable, "PATH": f"{checkout / 'bin'}:{os.environ['PATH']}",
           "CHROMIUM": str(checkout / "bin" / "chromium")}
    subprocess.run(["bash", str(checkout / "dev.sh"), command], env=env, check=True, timeout=60,
                   stdout=subprocess.DEVNULL)
    calls = log.read_text().splitlines()[len(before):]
    return [c for c in calls if c.startswith("-m pip install") and "--upgrade pip" not in c]


def test_dev_sh_parses() -> None:
    subprocess.run(["bash", "-n", str(ROOT / "dev.sh")], check=True, timeout=30)


def test_demo_installs_the_runtime_packages_and_test_adds_the_extras_once(checkout: Path) -> None:
    assert dev_sh(checkout, "demo") == ["-m pip install -q -e ."]
    assert dev_sh(checkout, "demo") == []
    assert dev_sh(checkout, "test") == ["-m pip install -q -e .[test]"]   # a demo venv still gets them
    assert dev_sh(checkout, "test") == []
    assert dev_sh(checkout, "demo") == []


def test_a_test_venv_needs_nothing_more_for_the_demo(checkout: Path) -> None:
    assert dev_sh(checkout, "test") == ["-m pip install -q -e .[test]"]
    assert dev_sh(checkout, "demo") == []


def test_a_change_of_pyproject_reinstalls_each_set_at_its_next_use(checkout: Path) -> None:
    dev_sh(checkout, "test")
    past = time.time() - 60
    for stamp in (checkout / ".venv").glob(".installed-*"):
        os.utime(stamp, (past, past))   # as if pyproject.toml had changed since
    assert dev_sh(checkout, "demo") == ["-m pip install -q -e ."]
    assert dev_sh(checkout, "test") == ["-m pip install -q -e .[test]"]


def test_mutate_adds_mutmut_to_the_test_set_once_and_runs_it(checkout: Path) -> None:
    _executable(checkout / ".venv" / "bin" / "mutmut", '#!/bin/sh\necho "mutmut $*" >> "$(dirname "$0")/../../calls.log"\n')
    assert dev_sh(checkout, "test") == ["-m pip install -q -e .[test]"]
    assert dev_sh(checkout, "mutate") == ["-m pip install -q -e .[test,mutation]"]
    assert dev_sh(checkout, "mutate") == []
    assert dev_sh(checkout, "test") == [] and dev_sh(checkout, "demo") == []
    runs = [line for line in (checkout / "calls.log").read_text().splitlines() if line.startswith("mutmut")]
    assert runs == ["mutmut run", "mutmut results"] * 2
