"""The layering rule, checked from the source (ast, no imports executed):

    shared/       imports nothing of agent/ or coordinator/
    agent/        imports shared/ only (never coordinator/)
    coordinator/  imports shared/ only (never agent/)

and no import cycle between modules. Imports inside functions count as much as module-level
ones (they are where cycles hide). The one exception is the farm test harness,
coordinator/testing.py, which composes a coordinator with real agents for tests and runtime
plugin authors; nothing else may import it.

  python scripts/layering.py        # prints violations, exit 1 if any (tests/test_layering.py)"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("coordinator", "agent", "shared")
#: (importer's top package, imported top package) pairs that point uphill
UPHILL = frozenset({("agent", "coordinator"), ("coordinator", "agent"), ("shared", "agent"), ("shared", "coordinator")})
#: modules allowed to import across the rule, and why
EXCEPTIONS = {"coordinator.testing": "the farm test harness composes a coordinator with real agents"}


@dataclass(frozen=True)
class Import:
    importer: str       # module name
    imported: str       # module name (resolved to a module of the tree when it is one)
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.imported}"


def source_files(root: Path = ROOT) -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, tree: ast.AST, known: set[str], root: Path = ROOT) -> list[Import]:
    """Every import of the tree's packages in the file, module-level and inside functions;
    `from a import b` names module a.b when b is a module, else a."""
    here = module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    rel = path.relative_to(root).as_posix()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(here, alias.name, rel, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                found.append(Import(here, sub if sub in known else mod, rel, node.lineno))
    return [i for i in found if i.imported.split(".")[0] in PACKAGES]


def _resolve(mod: str, known: set[str]) -> str | None:
    while mod and mod not in known:
        mod = mod.rpartition(".")[0]
    return mod or None


def all_imports(root: Path = ROOT) -> tuple[list[Import], set[str]]:
    files = source_files(root)
    known = {module_name(p, root) for p in files}
    found: list[Import] = []
    for path in files:
        found += imports_of(path, ast.parse(path.read_text(), str(path)), known, root)
    return found, known


def uphill(found: list[Import]) -> list[Import]:
    """Imports that break the rule (the documented exceptions aside)."""
    bad = []
    for imp in found:
        pair = (imp.importer.split(".")[0], imp.imported.split(".")[0])
        if imp.importer in EXCEPTIONS:
            continue
        if pair in UPHILL or imp.imported in EXCEPTIONS:
            bad.append(imp)
    return bad


def cycles(found: list[Import], known: set[str]) -> list[list[str]]:
    """Import cycles: strongly connected components of more than one module. A package's
    __init__ importing its own submodules is not an edge back from them."""
    graph: dict[str, set[str]] = defaultdict(set)
    for imp in found:
        target = _resolve(imp.imported, known)
        if target and target != imp.importer and not imp.importer.startswith(target + "."):
            graph[imp.importer].add(target)
    return sorted(sorted(c) for c in strongly_connected(graph, known) if len(c) > 1)


def strongly_connected(graph: dict[str, set[str]], nodes: set[str]) -> list[list[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    item = stack.pop()
                    on_stack.discard(item)
                    component.append(item)
                    if item == node:
                        break
                out.append(component)
    return out


def violations(root: Path = ROOT) -> list[str]:
    found, known = all_imports(root)
    return [f"uphill: {imp}" for imp in uphill(found)] + \
        [f"cycle: {' -> '.join(c)}" for c in cycles(found, known)]


def main() -> int:
    bad = violations()
    for line in bad:
        print(line)
    print(f"{len(bad)} layering violation(s)" if bad else "layering ok: shared <- agent, shared <- coordinator, "
          "no cycles")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
