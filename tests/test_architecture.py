"""The house plan as tests: no import cycles, dependencies one way, every module importable alone.

The graph is read from the source with ``ast`` (no import runs): an edge ``a -> b`` for every ``import b`` /
``from b import ...`` in module ``a``. Imports at module level (outside ``if TYPE_CHECKING:``) make the cycle
graph, since only those run at import time; every import, lazy ones inside functions included, counts for the
layering rules.
"""
from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "foundation"

# layer of each top-level part of the package: a module may import its own layer or lower ones
LAYERS = {
    "errors": 0, "atomic": 0, "registry": 0, "config_schema": 0, "config": 0, "__init__": 0,
    "layers": 1, "kernels": 1, "data": 1, "eval": 1,
    "hub": 2, "adapters": 2,
    "modalities": 3,
    "pretrain": 4, "finetune": 4, "recipes": 4, "loading": 4,
    "cli": 5, "benchmark": 5, "explain": 5,
}
# a modality's tools built on fine-tuning and evaluation (probes, studies, the challenge commands) sit on top of
# `finetune`, beside the CLI: nothing in the suite imports them
TOOLS = ("downstream", "commands")
# parts that a lower layer may never import, by name (the registry table reaches them lazily by string)
NEVER_BELOW = ("modalities", "pretrain", "finetune", "hub", "cli")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, name: str, top_level_only: bool) -> set[str]:
    """Names of foundation modules imported by the file (resolved against the known modules)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and _is_type_checking(node):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                found.add(mod)
                found.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import module`
            if top_level_only:
                if isinstance(node, (ast.If, ast.Try, ast.With)):
                    for part in ("body", "orelse", "finalbody", "handlers"):
                        for sub in getattr(node, part, []):
                            visit(sub.body if isinstance(sub, ast.ExceptHandler) else [sub])
            else:
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.stmt):
                        visit([child])
                    elif hasattr(child, "body") and isinstance(getattr(child, "body"), list):
                        visit([c for c in child.body if isinstance(c, ast.stmt)])

    visit(tree.body)
    return found


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    mods = _modules()
    return {name: {m for m in _imports(path, name, top_level_only) if m in mods and m != name}
            for name, path in mods.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(module: str) -> int:
    parts = module.split(".")
    if parts[1:2] == ["modalities"] and parts[-1] in TOOLS:
        return LAYERS["cli"]
    return LAYERS[_part(module)]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), as sorted lists."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            strong(v)
    return out


def _without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop edges *into* a package ``__init__`` from its own submodules (Python imports the parent first anyway;
    a submodule importing a sibling through the package is the usual re-export, not a cycle of logic)."""
    return {m: {t for t in deps if not m.startswith(t + ".")} for m, deps in graph.items()}


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules():
    cycles = _cycles(_without_package_inits(_graph(top_level_only=True)))
    assert cycles == [], f"import cycles (module-level imports): {cycles}"


def test_no_cycle_between_parts_of_the_package():
    """Between top-level parts (config, hub, pretrain, ...), counting lazy imports too."""
    parts: dict[str, set[str]] = {}
    for mod, deps in _graph(top_level_only=False).items():
        parts.setdefault(_part(mod), set()).update(_part(d) for d in deps if _part(d) != _part(mod))
    for part in list(parts.values()):
        for d in part:
            parts.setdefault(d, set())
    assert _cycles(parts) == [], f"cycles between parts of foundation/: {_cycles(parts)}"


def test_dependencies_go_one_way():
    wrong = []
    for mod, deps in _graph(top_level_only=False).items():
        assert _part(mod) in LAYERS, f"{mod}: part {_part(mod)!r} has no layer in LAYERS; add it to the house plan"
        for dep in deps:
            if _layer(dep) > _layer(mod) or (_layer(mod) <= 1 and _part(dep) in NEVER_BELOW):
                wrong.append(f"{mod} -> {dep}")
    assert wrong == [], "imports against the layering (lower layers must not import higher ones):\n" + "\n".join(wrong)


def test_nothing_imports_a_tool():
    wrong = [f"{mod} -> {d}" for mod, deps in _graph(top_level_only=False).items() for d in deps
             if d.split(".")[1:2] == ["modalities"] and d.split(".")[-1] in TOOLS and mod.split(".")[1] != "cli"]
    assert wrong == [], wrong


def test_modalities_never_import_each_other():
    wrong = []
    for mod, deps in _graph(top_level_only=False).items():
        if mod.startswith("foundation.modalities."):
            mine = mod.split(".")[2]
            wrong += [f"{mod} -> {d}" for d in deps
                      if d.startswith("foundation.modalities.") and d.split(".")[2] != mine]
    assert wrong == [], wrong


def test_config_imports_only_the_schema_the_errors_and_the_registry():
    deps = _graph(top_level_only=False)["foundation.config"]
    assert deps <= {"foundation.config_schema", "foundation.errors", "foundation.registry"}, deps


def test_registry_built_ins_point_at_real_classes():
    from foundation.registry import DATASETS, MODELS, OBJECTIVES

    mods = _modules()
    for reg in (MODELS, DATASETS, OBJECTIVES):
        for name in reg.names():
            target = reg.target(name)
            if target is None:
                continue
            module, attr = target.split(":")
            assert module in mods, f"{reg.kind} {name!r}: no module {module}"
            tree = ast.parse(mods[module].read_text(encoding="utf-8"))
            defined = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
            assert attr in defined, f"{reg.kind} {name!r}: {module} defines no {attr}"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_every_module_imports_alone():
    """Each module imported first, in a process that has imported no foundation module before (a fork of one
    that loaded only the third-party libraries, so the check takes seconds, not minutes)."""
    import subprocess

    code = f"""
import os, sys, importlib
import numpy, torch, scipy  # heavy third-party imports once, before forking
sys.path.insert(0, {str(ROOT)!r})
bad = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException as err:
            print(f"{{name}}: {{type(err).__name__}}: {{err}}", flush=True)
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status:
        bad.append(name)
sys.exit(1 if bad else 0)
"""
    names = sorted(_modules())
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=600,
                          env=env, cwd=ROOT)
    assert proc.returncode == 0, f"modules that fail to import alone:\n{proc.stdout}{proc.stderr[-2000:]}"
