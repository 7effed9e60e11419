"""No importable name of ours shadows a standard-library module.

Directories of ours end up on sys.path (bench/ when a bench script imports its sibling, tests/
through pytest's `pythonpath`, operator/ and trainer_image/ through the editable install), and
subprocesses inherit sys.path as PYTHONPATH (torch inductor's ISA probe does), where such a module
would be imported instead of the standard library's: bench/operator.py once broke vLLM's CPU
kernels that way, in every test that ran after the TRL benchmark's smoke test.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PATH_DIRS = ("bench", "tests", "operator", "trainer_image", "scripts")


def importable_names(folder: Path) -> set[str]:
    """Modules (foo.py) and regular packages (foo/__init__.py) directly in `folder`."""
    modules = {p.stem for p in folder.glob("*.py")}
    packages = {p.parent.name for p in folder.glob("*/__init__.py")}
    return modules | packages


def test_no_module_of_ours_shadows_the_standard_library() -> None:
    shadowing = {
        folder: sorted(importable_names(REPO / folder) & sys.stdlib_module_names)
        for folder in PATH_DIRS
    }
    assert shadowing == {folder: [] for folder in PATH_DIRS}
