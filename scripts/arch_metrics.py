"""Architecture metrics of the source tree (coordinator/, agent/, shared/; generated stubs excluded),
printed as one table so a refactoring's before and after come from the same command:

  python scripts/arch_metrics.py [--json]

* option sites: for each tuner option, the statements that spell it (a dataclass field, an
  argparse flag, a spec key or dotted spec path, a keyword argument or dict key of that name),
  the files they are in, and the statements that also carry the option's default literal;
* result shapes: dict displays with a "status" key and another device-result key, hand-written
  DeviceResult(...) protobuf constructions, crash-cause prefixes spelled as literals and parsed
  back with startswith;
* layering: imports (module-level and inside functions) that point uphill (agent -> coordinator,
  coordinator -> agent, shared -> either), and import cycles (strongly connected components of
  the module graph);
* size: the longest function and the longest class, in lines."""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import layering  # noqa: E402  (scripts/layering.py: the one import checker)

ROOT = layering.ROOT
PACKAGES = layering.PACKAGES
GENERATED = ("shared/pb/",)

# option -> (spellings: python name, CLI flags, spec keys/paths), default literal (None: no literal)
OPTIONS = {
    "n_eval": ({"n_eval", "eval", "--eval", "data.eval"}, 300),
    "n_calibration": ({"n_calibration", "calibration", "--calibration", "data.calibration"}, 64),
    "latency_runs": ({"latency_runs", "--latency-runs", "data.latency_runs"}, 20),
    "max_agreement_drop": ({"max_agreement_drop", "--max-drop", "--max-agreement-drop",
                            "strategy.max_agreement_drop"}, None),
    "ranking_images": ({"ranking_images", "--ranking-images", "strategy.ranking_images"}, 16),
    "blame_crashes": ({"blame_crashes", "--no-blame", "no_blame", "strategy.blame_crashes"}, None),
    "probe_recipes": ({"probe_recipes", "--probe-recipes", "strategy.probe_recipes"}, None),
}
RESULT_KEYS = {"crash_cause", "top1_agreement", "top5_agreement", "latency_ms_p50", "size_bytes", "num_images",
               "wall_seconds"}
CAUSE_PREFIXES = ("lost:", "build:", "signal:", "error:", "oom", "timeout", "not measured")


def source_files() -> list[Path]:
    files = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if not rel.startswith(GENERATED):
                files.append(path)
    return files


def _strings(node: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _spelled(stmt: ast.stmt, spellings: set[str], in_class: bool) -> bool:
    if isinstance(stmt, ast.AnnAssign) and in_class and isinstance(stmt.target, ast.Name) \
            and stmt.target.id in spellings:
        return True
    for node in ast.walk(stmt):
        if isinstance(node, ast.keyword) and node.arg in spellings:
            return True
        if isinstance(node, ast.Dict) and any(isinstance(k, ast.Constant) and k.value in spellings
                                              for k in node.keys):
            return True
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in spellings \
                and (node.value.startswith("-") or "." in node.value or "_" in node.value):
            return True
    return False


def _has_literal(stmt: ast.stmt, value) -> bool:
    return value is not None and any(isinstance(n, ast.Constant) and n.value == value and type(n.value) is type(value)
                                     for n in ast.walk(stmt))


def _simple_statements(tree: ast.AST):
    """(statement, inside a class body) for statements that hold no other statements."""
    def visit(node, in_class):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                nested = any(isinstance(c, ast.stmt) for c in ast.iter_child_nodes(child))
                if not nested:
                    yield child, in_class
                else:
                    if isinstance(child, (ast.If, ast.For, ast.While, ast.With, ast.Try)):
                        yield from _header(child, in_class)
                    yield from visit(child, isinstance(child, ast.ClassDef))
    yield from visit(tree, False)


def _header(node, in_class):
    """An if/for/with header can spell an option too (`if args.max_top1_drop ...`)."""
    for field in ("test", "iter", "items"):
        value = getattr(node, field, None)
        if value is not None:
            expr = ast.Expr(value=value if not isinstance(value, list) else ast.Tuple(
                elts=[i.context_expr for i in value], ctx=ast.Load()))
            yield expr, in_class


def option_sites(trees: dict[Path, ast.AST]) -> dict[str, dict]:
    out = {}
    for name, (spellings, default) in OPTIONS.items():
        sites, files, defaults = 0, set(), 0
        for path, tree in trees.items():
            for stmt, in_class in _simple_statements(tree):
                if _spelled(stmt, spellings, in_class):
                    sites += 1
                    files.add(path.relative_to(ROOT).as_posix())
                    defaults += _has_literal(stmt, default)
        out[name] = {"sites": sites, "files": len(files), "default_literals": defaults}
    return out


def _is_cause(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        text = node.value
    elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        text = str(node.values[0].value)
    else:
        return False
    return text.startswith(CAUSE_PREFIXES) and not text.startswith("error: ") and len(text) < 60


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def result_shapes(trees: dict[Path, ast.AST]) -> dict[str, int]:
    """A crash cause literal is one used as a value: returned, compared, a dict value, a keyword
    or a constructor argument (not a kwarg name popped from **kwargs, not part of an f-string)."""
    dicts = protos = causes = parses = 0
    for tree in trees.values():
        parents = _parents(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                if "status" in keys and keys & RESULT_KEYS:
                    dicts += 1
            elif isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called == "DeviceResult" and getattr(func, "value", None) is not None \
                        and getattr(func.value, "id", "") == "job_pb2" and len(node.keywords) >= 3:
                    protos += 1
                if called == "startswith" and any(s.startswith(CAUSE_PREFIXES) for s in _strings(node)):
                    parses += 1
            if _is_cause(node) and not isinstance(parents.get(node), ast.JoinedStr):
                parent = parents.get(node)
                if isinstance(parent, (ast.Return, ast.Compare, ast.keyword, ast.BinOp)) or \
                        (isinstance(parent, ast.Dict) and node in parent.values) or \
                        (isinstance(parent, ast.Call) and node in parent.args and
                         getattr(parent.func, "id", getattr(parent.func, "attr", ""))[:1].isupper()):
                    causes += 1
    return {"result_dict_displays": dicts, "device_result_proto_by_hand": protos,
            "crash_cause_literals": causes, "crash_cause_startswith": parses}


def repeated_idioms(trees: dict[Path, ast.AST]) -> dict[str, int]:
    """Rename-into-place calls (os.replace / os.rename / Path.replace(target)) outside the one
    helper, and literal groupings of AgentState members."""
    renames = groupings = 0
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = getattr(node.func.value, "id", "")
                if (owner == "os" and node.func.attr in ("replace", "rename")) or \
                        (owner != "os" and node.func.attr == "replace" and len(node.args) == 1 and not node.keywords):
                    renames += 1
            if isinstance(node, (ast.List, ast.Tuple, ast.Set)) and len(node.elts) >= 2 and all(
                    isinstance(e, ast.Attribute) and getattr(e.value, "id", "") == "AgentState" for e in node.elts):
                groupings += 1
    return {"rename_into_place_calls": renames, "agent_state_groupings": groupings}


def layering_numbers() -> dict:
    """Uphill imports (one per importing statement and module) and cycles, as scripts/layering.py
    checks them."""
    found, known = layering.all_imports(ROOT)
    uphill = list(dict.fromkeys(f"{i.path}:{i.line} -> {i.imported}" for i in layering.uphill(found)))
    return {"uphill_imports": uphill, "cycles": layering.cycles(found, known)}


def sizes(trees: dict[Path, ast.AST]) -> dict:
    best = {"function": (0, ""), "class": (0, "")}
    for path, tree in trees.items():
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(tree):
            kind = "class" if isinstance(node, ast.ClassDef) else \
                "function" if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
            if kind:
                length = node.end_lineno - node.lineno + 1
                if length > best[kind][0]:
                    best[kind] = (length, f"{rel}:{node.name}")
    return {f"longest_{k}": {"lines": v[0], "where": v[1]} for k, v in best.items()}


def measure() -> dict:
    trees = {p: ast.parse(p.read_text(), str(p)) for p in source_files()}
    return {"options": option_sites(trees), "results": result_shapes(trees), "idioms": repeated_idioms(trees),
            "layering": layering_numbers(), **sizes(trees),
            "source_lines": sum(len(p.read_text().splitlines()) for p in trees)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    m = measure()
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    print("option               sites  files  default literals")
    for name, o in m["options"].items():
        print(f"{name:<20} {o['sites']:>5}  {o['files']:>5}  {o['default_literals']:>5}")
    total = sum(o["sites"] for o in m["options"].values())
    print(f"{'(all options)':<20} {total:>5}")
    for key, value in m["results"].items():
        print(f"{key:<30} {value}")
    for key, value in m["idioms"].items():
        print(f"{key:<30} {value}")
    lay = m["layering"]
    print(f"uphill imports: {len(lay['uphill_imports'])}")
    for item in lay["uphill_imports"]:
        print(f"  {item}")
    print(f"import cycles: {len(lay['cycles'])} ({sum(len(c) for c in lay['cycles'])} modules)")
    for cycle in lay["cycles"]:
        print(f"  {' <-> '.join(cycle)}")
    for key in ("longest_function", "longest_class"):
        print(f"{key}: {m[key]['lines']} lines ({m[key]['where']})")
    print(f"source lines: {m['source_lines']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
