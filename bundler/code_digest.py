"""Cache keys from code: the sha256 of every project module an artefact's maker imports.

Walks the import statements (the AST, not the interpreter) from the given modules through
everything under bundler/, runtime/ and targets/, so a cache key changes whenever any code that
could change the artefact changes, without a hand-kept list of files that falls behind.
"""
from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bundler", "runtime", "targets")


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    base = REPO_ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str) -> set[str]:
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                stem = f"{base}.{node.module}" if node.module else base
            else:
                stem = node.module or ""
            found.add(stem)
            found.update(f"{stem}.{alias.name}" for alias in node.names)  # `from pkg import module`
    parents = set()
    for name in found:  # importing a.b.c runs a/__init__ and a/b/__init__ too
        parts = name.split(".")
        parents.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return found | parents


def import_closure(*modules: str) -> dict[str, Path]:
    """Project modules reachable by imports from `modules` (themselves included), by name."""
    seen: dict[str, Path] = {}
    pending = list(modules)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:
            continue
        seen[name] = path
        pending.extend(_imports(path, name) - set(seen))
    return seen


@lru_cache(maxsize=None)
def code_digest(*modules: str) -> str:
    """sha256 over the sources of the import closure of `modules`, in name order."""
    digest = hashlib.sha256()
    for name, path in sorted(import_closure(*modules).items()):
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
