"""Start-up: `dinokit --help`, `--version` and `import dinokit` answer without importing torch, and the lazy
re-exports of `dinokit/__init__.py` still give every public name."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dinokit
from dinokit.cli import build_parser

HEAVY = ("torch", "numpy", "PIL", "safetensors")  # what takes seconds (torch) or is only needed to do the work
# a generous bound: about 0.1 s on a 2-core development machine, where importing torch alone takes 2–5 s
SECONDS = 3.0


def _heavy_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after running `code` (this test process already holds torch)."""
    probe = f"{code}; import sys; print(*sorted(set({HEAVY}) & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def _verbs() -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return list(sub.choices)


def test_building_the_parser_imports_nothing_heavy():
    assert _heavy_after("import dinokit.cli; dinokit.cli.build_parser()") == []
    assert _heavy_after("import dinokit; dinokit.__version__") == []
    # the probe sees an import: the lazy re-exports do import torch once a heavy name is used
    assert "torch" in _heavy_after("import dinokit; dinokit.create_backbone")


@pytest.mark.parametrize("verb", [None, *_verbs()])
def test_help_is_quick(verb):
    argv = [sys.executable, "-m", "dinokit", *([verb] if verb else []), "--help"]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: dinokit {verb or ''}".rstrip())
    assert seconds < SECONDS, f"{' '.join(argv[2:])} took {seconds:.2f} s"


def test_python_m_dinokit_is_the_command():
    done = subprocess.run([sys.executable, "-m", "dinokit", "--version"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, f"dinokit {dinokit.__version__}\n")
    done = subprocess.run([sys.executable, "-m", "dinokit", "no-such-verb"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "usage: dinokit" in done.stderr and "invalid choice" in done.stderr


def test_every_public_name_resolves_to_its_definition():
    names = {}
    exec("from dinokit import *", names)
    assert set(names) - {"__builtins__"} == set(dinokit.__all__)
    for name in dinokit.__all__:
        module = importlib.import_module(dinokit._EXPORTS[name], "dinokit")
        assert getattr(dinokit, name) is getattr(module, name), name
    assert set(dinokit.__all__) <= set(dir(dinokit))
    assert dinokit.models.weights is importlib.import_module("dinokit.models.weights")  # submodules as attributes
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        dinokit.no_such_name  # noqa: B018


def test_type_checkers_see_the_same_names():
    """The `if TYPE_CHECKING:` imports (what editors and type checkers read) name what `__getattr__` serves."""
    tree = ast.parse(Path(dinokit.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    imported = {f".{'.' * (i.level - 1)}{i.module}": [a.name for a in i.names] for i in block.body}
    seen = {name: module for module, names in imported.items() for name in names}
    assert seen == dinokit._EXPORTS
    assert sorted(dinokit.__all__) == sorted(dinokit._EXPORTS)


def test_tab_completion_with_argcomplete(tmp_path):
    pytest.importorskip("argcomplete")
    out = tmp_path / "completions"
    env = dict(os.environ, _ARGCOMPLETE="1", COMP_LINE="dinokit ev", COMP_POINT="10",
               _ARGCOMPLETE_STDOUT_FILENAME=str(out))  # fmt: skip
    subprocess.run([sys.executable, "-m", "dinokit"], env=env, capture_output=True, timeout=60)
    assert out.read_text().split() == ["eval"]
