"""The code a unit runs, found rather than listed: the cache key's code part.

A unit names its function as "module:function". What it runs is that module, every `know` module it imports,
transitively (imports inside functions included, and the packages that hold them), and the source of every native
kernel one of them loads with a literal `kernels.load("<name>", ...)`. `code_hash` hashes those files: Python as its
syntax tree without docstrings (so comments, docstrings and formatting do not invalidate a cache; code does), C/C++ as
text. The same import graph backs the test that `know` has no import cycle (`import_graph`).
"""
from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent  # the know package
PACKAGE = ROOT.name


def module_file(module: str, root: Path | None = None) -> Path | None:
    """The file of a `know` module ("know.predict" -> know/predict.py, a package -> its __init__.py), or None."""
    root = root or ROOT
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = root.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _parse(path: Path) -> ast.Module:
    stat = path.stat()
    return _parse_version(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=None)
def _parse_version(path: Path, mtime_ns: int, size: int) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module name of a (possibly relative) `from ... import`."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def direct_imports(module: str, root: Path | None = None) -> set[str]:
    """The `know` modules `module` imports anywhere in its file (functions included), with their parent packages."""
    root = root or ROOT
    path = module_file(module, root)
    if path is None:
        return set()
    found = set()
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, module, path.name == "__init__.py")
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from know import kernels` imports a module
    found = {m for m in found if module_file(m, root) is not None}
    return {parent for m in found for parent in _parents(m)} - {module}


def _parents(module: str) -> list[str]:
    """"know.models.registry" -> ["know", "know.models", "know.models.registry"]: importing one imports them all."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def kernel_sources(module: str, root: Path | None = None) -> set[Path]:
    """Native sources `module` loads: the literal first argument of each `kernels.load(...)` call."""
    root = root or ROOT
    path = module_file(module, root)
    if path is None:
        return set()
    found = set()
    for node in ast.walk(_parse(path)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "kernels" and node.args
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            name = node.args[0].value
            found.update(p for p in (root / "kernels" / f"{name}.c", root / "kernels" / f"{name}.cpp") if p.is_file())
    return found


def closure(module: str, root: Path | None = None) -> list[Path]:
    """Every file that `module` runs: its module, the `know` modules it imports transitively, their kernels."""
    root = root or ROOT
    seen, todo = set(), [*_parents(module)]
    while todo:
        m = todo.pop()
        if m not in seen and module_file(m, root) is not None:
            seen.add(m)
            todo.extend(direct_imports(m, root))
    files = {module_file(m, root) for m in seen}
    files.update(src for m in seen for src in kernel_sources(m, root))
    return sorted(files)


def _normalised(path: Path) -> bytes:
    """Python: its syntax tree without docstrings; anything else: its bytes."""
    stat = path.stat()
    return _normalised_version(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=None)
def _normalised_version(path: Path, mtime_ns: int, size: int) -> bytes:
    if path.suffix != ".py":
        return path.read_bytes()
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False).encode()


def code_hash(module: str, root: Path | None = None) -> str:
    """Hash of what `module` runs (see the module docstring); 16 hex digits."""
    return _code_hash(module, root or ROOT)


@functools.lru_cache(maxsize=None)
def _code_hash(module: str, root: Path) -> str:
    h = hashlib.sha256()
    for path in closure(module, root):
        h.update(path.relative_to(root.parent).as_posix().encode())
        h.update(_normalised(path))
    return h.hexdigest()[:16]


def import_graph(root: Path | None = None) -> dict[str, set[str]]:
    """{module: the `know` modules it imports directly} for every module of the package (without parent packages
    that are only implied)."""
    root = root or ROOT
    graph = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        graph[module] = {m for m in direct_imports(module, root) if not _is_ancestor(m, module)}
    return graph


def _is_ancestor(package: str, module: str) -> bool:
    return module.startswith(package + ".")
