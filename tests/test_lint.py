"""Lint, format and types, in the fast tier (no service): `ruff check` and `ruff format --check`
over the tree and mypy over the pure modules, all configured in pyproject.toml; and the shape
of the test suite itself."""

from __future__ import annotations

import ast
import subprocess
import sys

from helpers import ROOT

TESTS = ROOT / "tests"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff_check_passes():
    done = run("ruff", "check", "--no-cache", "--output-format", "concise", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_tree_is_formatted():
    """`ruff format` would change nothing (run it to mend: `.venv/bin/ruff format .`)."""
    done = run("ruff", "format", "--check", "--no-cache", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_passes_on_the_pure_modules():
    """[tool.mypy] files: the pure modules (their imports followed silently)."""
    done = run("mypy", "--no-error-summary")
    assert done.returncode == 0, done.stdout + done.stderr


def parsed_test_files() -> dict[str, ast.Module]:
    return {path.name: ast.parse(path.read_text()) for path in sorted(TESTS.glob("*.py"))}


def test_no_test_module_imports_another_or_conftest():
    """Shared helpers are in tests/helpers.py, shared fixtures in conftest.py: a test module
    that imports another (or conftest) runs that module's imports and fixtures twice."""
    wrong = []
    for name, tree in parsed_test_files().items():
        for node in ast.walk(tree):
            imported = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            wrong += [
                f"{name}:{node.lineno} imports {module}"
                for module in imported
                if module == "conftest" or module.startswith("test_")
            ]
    assert not wrong


def test_no_helper_is_defined_again_in_a_test_module():
    """A function or class a helper module has (tests/helpers.py, network.py, pages.py, …:
    every module but conftest and the test_* ones) is imported from there, not written again,
    and no two helper modules have the same one."""
    modules = parsed_test_files()
    helper_modules = [
        name for name in modules if name != "conftest.py" and not name.startswith("test_")
    ]
    assert "helpers.py" in helper_modules

    def defined(tree: ast.Module) -> list[str]:
        return [
            node.name
            for node in tree.body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        ]

    shared: dict[str, str] = {}
    again = []
    for name in helper_modules:
        for helper in defined(modules.pop(name)):
            if helper in shared:
                again.append(f"{name}: {helper} (also in {shared[helper]})")
            shared.setdefault(helper, name)
    again += [
        f"{name}: {helper}"
        for name, tree in modules.items()
        for helper in defined(tree)
        if helper in shared
    ]
    assert not again
