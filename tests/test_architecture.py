"""The house's rules (docs/architecture.md), checked on the source: no import cycles in ``prunevid/`` (imports inside
functions included), the library never imports the harness-level packages (``prunevid.harness``, the other tools'
plugins in ``prunevid.integrations``), nothing in the kit imports the plugins, the patch state touched only by
``prunevid/state.py``."""
import ast
import os
import re

ROOT = os.path.join(os.path.dirname(__file__), "..")
PKG = os.path.join(ROOT, "prunevid")


def _modules() -> dict:
    """dotted name -> file path, for every .py file of the package."""
    out = {}
    for dirpath, _, files in os.walk(PKG):
        if "__pycache__" in dirpath:
            continue
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return out


def _imports(name: str, path: str, modules: dict) -> set:
    """The package modules ``name`` imports anywhere in its file (module level and inside functions).
    ``from P import n`` is an edge to ``P.n`` when that is a module, else to ``P``."""
    is_pkg = path.endswith("__init__.py")
    package = name if is_pkg else name.rpartition(".")[0]
    tree = ast.parse(open(path).read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    out.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("prunevid"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:
                    out.add(sub)
                elif target in modules:
                    out.add(target)
    # importing a.b.c first runs a.b's __init__: an edge to each enclosing package (the root excepted, and the
    # importer's own packages, which are being initialised already)
    own = {package.rsplit(".", i)[0] for i in range(package.count(".") + 1)}
    for target in list(out):
        parts = target.split(".")
        for i in range(2, len(parts)):
            parent = ".".join(parts[:i])
            if parent in modules and parent not in own:
                out.add(parent)
    out.discard(name)
    return out


def _cycles(graph: dict) -> list:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_walker_sees_relative_and_lazy_imports():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    assert "prunevid.state" in graph["prunevid.patch"]                 # from . import state as _state
    assert "prunevid.merge" in graph["prunevid.methods.prunevid_method"]   # from ..merge import ...
    # a lazy import inside a function counts: methods.method_class imports nothing lazily, but kept_map does
    assert "prunevid.state" in graph["prunevid.methods"]
    # an import of a package's module runs the package's __init__ first
    assert "prunevid.benchmarks" in graph["prunevid.harness.runner"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_in_the_package():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_only_the_state_module_touches_the_patch_state_attribute():
    offenders = []
    for name, path in _modules().items():
        if name == "prunevid.state":
            continue
        for i, line in enumerate(open(path), 1):
            if re.search(r"_prunevid\b", line):
                offenders.append(f"{os.path.relpath(path, ROOT)}:{i}")
    nb_dir = os.path.join(ROOT, "notebooks")
    for f in sorted(os.listdir(nb_dir)):
        if f.endswith(".ipynb") and re.search(r"_prunevid\b", open(os.path.join(nb_dir, f)).read()):
            offenders.append(f"notebooks/{f}")
    assert not offenders, f"use the accessors of prunevid.state instead: {offenders}"


# harness-level: the kit's programs (CLI, runner, reports, bench, FLOPs) and the plugins other tools load
HARNESS_LEVEL = ("prunevid.harness", "prunevid.integrations")


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_library_never_imports_the_harness():
    """``prunevid.harness`` and ``prunevid.integrations`` sit on top: nothing below imports them."""
    modules = _modules()
    offenders = sorted(f"{m} -> {t}" for m, p in modules.items()
                       if not any(_in(m, h) for h in HARNESS_LEVEL) and m != "prunevid.__main__"
                       for t in _imports(m, p, modules) if any(_in(t, h) for h in HARNESS_LEVEL))
    assert not offenders, offenders


def test_nothing_in_the_kit_imports_the_plugins():
    """``prunevid.integrations`` is loaded by the other tool (lmms-eval, through the entry points of pyproject.toml),
    never by the kit: the kit runs without those tools installed."""
    modules = _modules()
    offenders = sorted(f"{m} -> {t}" for m, p in modules.items() if not _in(m, "prunevid.integrations")
                       for t in _imports(m, p, modules) if _in(t, "prunevid.integrations"))
    assert not offenders, offenders


def test_every_module_says_what_it_owns():
    missing = []
    for name, path in _modules().items():
        tree = ast.parse(open(path).read(), path)
        doc = ast.get_docstring(tree)
        if not doc or not doc.strip():
            missing.append(name)
    assert not missing, f"modules without a docstring: {missing}"
