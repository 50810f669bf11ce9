"""The library never imports the application: checked on the source (every import statement, including
ones inside functions), and importing the library pulls in no optional dependency."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "clipforge"
LIBRARY = ["config", "registry", "factory", "model", "tokenizer", "transforms", "checkpoint", "hf", "hub",
           "zeroshot", "api", "export", "fastpath"]
REQUIRED = ["config", "registry", "factory", "model", "transforms", "checkpoint", "hf", "hub", "api"]
APPLICATION = ["data", "train", "eval", "serve", "cli", "commands"]


def _library_files() -> list[Path]:
    files = []
    for name in LIBRARY:
        package, module = SRC / name, SRC / f"{name}.py"
        if package.is_dir():
            files += sorted(package.rglob("*.py"))
        elif module.is_file():
            files.append(module)
    return files


def _imported_modules(path: Path, src: Path = SRC) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(src.parent).with_suffix("").parts[:-1])  # e.g. clipforge.model
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against the file's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]  # `from clipforge import data`
    return found


def _is_application(module: str) -> bool:
    return any(module == f"clipforge.{app}" or module.startswith(f"clipforge.{app}.") for app in APPLICATION)


def test_library_modules_exist():
    present = {p.stem if p.suffix else p.name for p in SRC.iterdir()}
    assert set(REQUIRED) <= present


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_library_module_does_not_import_the_application(path):
    bad = [f"line {line}: {module}" for line, module in _imported_modules(path) if _is_application(module)]
    assert not bad, f"{path.relative_to(SRC)} imports the application layer: {bad}"


def test_the_checker_sees_violations(tmp_path):
    """The control: lazy, relative and from-imports of the application are all caught."""
    probe = tmp_path / "clipforge" / "model" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("def f():\n    from clipforge.train import loop\n    from ..data import loader\n"
                     "    from clipforge import serve\n    import clipforge.eval.metrics\n")
    caught = {m for _, m in _imported_modules(probe, src=tmp_path / "clipforge") if _is_application(m)}
    assert {"clipforge.train", "clipforge.data", "clipforge.serve", "clipforge.eval.metrics"} <= caught


@pytest.mark.slow
def test_importing_the_library_pulls_no_optional_dependency():
    code = (
        "import sys, clipforge, clipforge.hf, clipforge.hub, clipforge.checkpoint, clipforge.api\n"
        "heavy = [m for m in ('transformers', 'clipforge.data', 'clipforge.train', 'clipforge.eval', "
        "'clipforge.serve', 'fastapi', 'sklearn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
