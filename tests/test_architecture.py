"""The layers of docs/architecture.md hold in the code: every import of analytics/ (at the top of a
module or inside a function) runs one way, there is no import cycle, every module has a layer,
pages import only what their row allows, and analytics/ never imports Streamlit.

The rules are read from the tables of docs/architecture.md, so the document and the code cannot
drift apart: a new module or a new import either fits the tables or the tables change with it.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ANALYTICS = ROOT / "analytics"
DOC = ROOT / "docs" / "architecture.md"


# --- the rules, from the document ----------------------------------------------------------

def _table(header: str) -> list[list[str]]:
    """The rows of the markdown table whose header line starts with `header` (cells stripped)."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


LAYERS = {row[0]: {"modules": _names(row[1]),
                   "may_import": [name.strip() for name in row[2].split(",") if name.strip()]}
          for row in _table("| layer | modules | may import |")}
PAGE_RULES = [(row[0], _names(row[1])) for row in _table("| page modules | may import from `analytics/` |")]


def _matches(module: str, pattern: str) -> bool:
    if pattern.endswith(".*"):
        package = pattern[:-2]
        return module == package or module.startswith(package + ".")
    return module == pattern


def _specificity(pattern: str) -> tuple:
    return (not pattern.endswith(".*"), len(pattern))


def layer_of(module: str) -> str | None:
    """The layer whose most specific pattern names `module` (a path under analytics/, dotted)."""
    best = None
    for layer, rule in LAYERS.items():
        for pattern in rule["modules"]:
            if _matches(module, pattern) and (best is None or _specificity(pattern) > _specificity(best[1])):
                best = (layer, pattern)
    return best[0] if best else None


# --- the imports, from the code --------------------------------------------------------------

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ANALYTICS).with_suffix("").parts)
    if parts == ["__init__"]:
        return "__init__"
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in ANALYTICS.rglob("*.py")}


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _runtime_imports(tree: ast.AST):
    """Every import statement that runs (module level or inside a function); not `if TYPE_CHECKING:` ones."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for n in ast.walk(node)}
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in skipped]


def _targets(importer: str | None, node) -> list[str]:
    """The analytics modules (dotted, under analytics/) an import statement loads."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = [] if importer in (None, "__init__") else importer.split(".")
            if importer is not None and importer != "__init__" and not _is_package(importer):
                base = base[:-1]
            base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
            package = ".".join(["analytics", *base] + ([node.module] if node.module else []))
        else:
            package = node.module or ""
        names = [f"{package}.{a.name}" for a in node.names]
    found = []
    for name in names:
        if name != "analytics" and not name.startswith("analytics."):
            continue
        dotted = name.removeprefix("analytics").removeprefix(".")
        while dotted and dotted not in MODULES:
            dotted = dotted.rpartition(".")[0]
        if dotted:
            found.append(dotted)
    return found


def _with_packages(importer: str, target: str) -> set[str]:
    """Importing a.b.c from outside package a.b also runs a.b's and a's __init__."""
    loaded = {target}
    parts = target.split(".")
    for i in range(1, len(parts)):
        package = ".".join(parts[:i])
        if not (importer == package or importer.startswith(package + ".")):
            loaded.add(package)
    return loaded


def import_graph() -> dict[str, dict[str, int]]:
    """importer -> {imported module: line}, every runtime import of analytics/, plus the command
    registry's table (cli.py imports the chosen command's module by name)."""
    graph: dict[str, dict[str, int]] = {}
    for module, path in MODULES.items():
        edges = graph.setdefault(module, {})
        for node in _runtime_imports(ast.parse(path.read_text(), filename=str(path))):
            for target in _targets(module, node):
                for loaded in _with_packages(module, target):
                    if loaded != module:
                        edges.setdefault(loaded, node.lineno)
    from analytics import cli

    for name, (command_module, _help) in cli.COMMANDS.items():
        graph["cli"].setdefault(f"commands.{command_module}", 0)
    return graph


# --- the checks ------------------------------------------------------------------------------

def test_every_module_of_analytics_has_a_layer():
    assert [m for m in MODULES if layer_of(m) is None] == []
    assert set().union(*(set(rule["may_import"]) for rule in LAYERS.values())) <= set(LAYERS)


def test_imports_run_the_way_docs_architecture_says():
    offenders = []
    for importer, edges in import_graph().items():
        own = layer_of(importer)
        allowed = {own, *LAYERS[own]["may_import"]}
        for target, line in edges.items():
            if layer_of(target) not in allowed:
                offenders.append(f"analytics/{MODULES[importer].relative_to(ANALYTICS)}:{line}: "
                                 f"{own} imports {target} ({layer_of(target)})")
    assert offenders == [], "\n".join(offenders)


def test_no_import_cycle_in_analytics():
    graph = import_graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    assert cycles == []


def test_the_layer_rules_are_not_vacuous():
    """The graph the checks read has the edges the document describes (a parser that found nothing would pass)."""
    graph = import_graph()
    assert "course" in graph["screens.workspace"] and "scales" in graph["outcomes"]
    assert "commands.import_files" in graph["cli"]
    assert "intervals" not in graph["course"] and "store" not in graph["course"]
    assert layer_of("durability.cohort") == "estimators" and layer_of("fhir.export") == "outputs"


def test_only_the_command_registry_imports_by_name():
    """importlib and __import__ would hide an import from these checks: only cli.py uses one."""
    users = []
    for module, path in MODULES.items():
        text = path.read_text()
        if module != "cli" and ("import_module" in text or "__import__" in text):
            users.append(module)
    assert users == []


def _page_imports(path: Path) -> dict[str, int]:
    found = {}
    for node in _runtime_imports(ast.parse(path.read_text(), filename=str(path))):
        for target in _targets(None, node):
            found.setdefault(target, node.lineno)
    return found


def test_pages_import_only_what_their_row_allows():
    pages = sorted((ROOT / "pages").glob("*.py")) + [ROOT / "dashboard.py"]
    named = {Path(p).name for p in re.findall(r"`pages/([^`]+)`", PAGE_RULES[0][0])}
    assert named and named <= {p.name for p in pages}
    offenders = []
    for path in pages:
        allowed = PAGE_RULES[0][1] if path.name in named and path.parent.name == "pages" else PAGE_RULES[1][1]
        for target, line in _page_imports(path).items():
            if not any(_matches(target, pattern) for pattern in allowed):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: imports analytics.{target}")
    assert offenders == [], "\n".join(offenders)


def test_analytics_never_imports_streamlit_not_even_inside_a_function():
    offenders = []
    for module, path in MODULES.items():
        for node in _runtime_imports(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(n == "streamlit" or n.startswith("streamlit.") for n in names):
                offenders.append(f"analytics/{path.relative_to(ANALYTICS)}:{node.lineno}")
    assert offenders == []
