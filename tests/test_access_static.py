"""Static checks that pages cannot bypass the scoped data layer, that no role is checked outside
analytics/permissions.py, and that every permission and audit action is documented (datasette-style:
an undocumented action fails the build)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from analytics import audit, permissions

ROOT = Path(__file__).resolve().parent.parent
SECURITY_DOC = ROOT / "docs" / "security.md"

# Modules allowed to open the database themselves, each with the reason (also in docs/security.md).
DATABASE_OPENERS = {
    "store": "owns connections and migrations",
    "access": "the scoped read layer",
    "ingest": "imports write rows in one transaction",
    "audit": "appends to and verifies the audit trail",
    "auth": "accounts, sign-in and lockout",
    "sessions": "server-side sessions (only hashes of their tokens)",
    "export": "operator exports run with the system scope",
    "bench": "benchmarks its own generated synthetic database",
    "visits": "visit entry writes its extra rows inside the import's transaction",
    "selfreport": "self-report links (hashed tokens) and safety flags",
    "backup": "backup reads the database and its private copy; restore checks the restored file",
    "health": "the health checks read every table and verify the audit chain",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT / "analytics")
    return rel.parts[0].removesuffix(".py")


def _opens_database(tree: ast.AST) -> list[str]:
    """Calls like store.connect(...), store.transaction(...), duckdb.connect(...) or connect imported from store."""
    found = []
    imported_from_store = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[-1] == "store":
            imported_from_store |= {a.asname or a.name for a in node.names}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr in ("connect", "transaction") and isinstance(f.value, ast.Name) \
                and f.value.id in ("store", "duckdb"):
            found.append(f"{f.value.id}.{f.attr} (line {node.lineno})")
        elif isinstance(f, ast.Name) and f.id in imported_from_store & {"connect", "transaction"}:
            found.append(f"{f.id} (line {node.lineno})")
    return found


def _imports(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}
    return names


def test_pages_and_dashboard_never_touch_the_database_directly():
    offenders = {}
    for path in [*sorted((ROOT / "pages").glob("*.py")), ROOT / "dashboard.py"]:
        tree = ast.parse(path.read_text(), filename=str(path))
        bad = {n for n in _imports(tree)
               if n == "duckdb" or n.startswith("duckdb.") or n in ("analytics.store", "analytics.analytics.store")
               or n.startswith("analytics.store.")}
        bad |= set(_opens_database(tree))
        if bad:
            offenders[path.name] = sorted(bad)
    assert offenders == {}, f"pages must read through analytics.access (DataAccess), not the store: {offenders}"


def test_only_the_listed_analytics_modules_open_the_database():
    offenders = {}
    for path in sorted((ROOT / "analytics").rglob("*.py")):
        calls = _opens_database(ast.parse(path.read_text(), filename=str(path)))
        if calls and _module_name(path) not in DATABASE_OPENERS:
            offenders[str(path.relative_to(ROOT))] = calls
    assert offenders == {}, (
        f"these modules open the database outside analytics.access: {offenders}; read through DataAccess "
        "or, if it must, add the module with its reason to DATABASE_OPENERS and docs/security.md")


def test_every_audit_action_used_in_code_is_declared():
    used = set()
    call = re.compile(r"""(?:audit\.append\([^,]+,\s*[^,]+,|\.log\()\s*["']([a-z_]+)["']""")
    for path in [*(ROOT / "analytics").rglob("*.py"), *(ROOT / "pages").glob("*.py"), ROOT / "dashboard.py"]:
        used |= set(call.findall(path.read_text()))
    assert used, "the pattern found no audit calls at all: the check itself is broken"
    assert used <= set(audit.ACTIONS), f"undeclared audit actions: {sorted(used - set(audit.ACTIONS))}"


def test_every_action_role_permission_and_database_opener_is_documented():
    text = SECURITY_DOC.read_text()
    missing = [f"action {a}" for a in audit.ACTIONS if f"`{a}`" not in text]
    missing += [f"role {r}" for r in permissions.ROLES if f"`{r}`" not in text]
    missing += [f"permission {p}" for p in permissions.ACTIONS if f"`{p}`" not in text]
    missing += [f"opener {m}" for m in DATABASE_OPENERS if f"`analytics/{m}" not in text]
    assert missing == [], f"docs/security.md does not document: {missing}"


def test_roles_are_checked_only_through_permissions():
    """No comparison of a role with a role's name (`scope.role == "admin"`, `role in ("clinician", "system")`)
    outside analytics/permissions.py: every such check asks may()."""
    offenders = []
    names = set(permissions.ROLES) | {permissions.SYSTEM_ROLE}
    for path in [*(ROOT / "analytics").rglob("*.py"), *(ROOT / "pages").glob("*.py"), ROOT / "dashboard.py"]:
        if path.name == "permissions.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            keys = {id(k) for n in sides for sub in ast.walk(n) if isinstance(sub, ast.Subscript) for k in ast.walk(sub.slice)}
            literals = {c.value for n in sides for c in ast.walk(n) if isinstance(c, ast.Constant) and id(c) not in keys}
            if literals & names and any("role" in ast.unparse(n) for n in sides):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert offenders == [], offenders
