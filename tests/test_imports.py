"""The import rules of STYLE.md: pure modules stay pure, the web side never reaches into workers."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "daemon"
PURE = {"errors", "states", "manifest", "events", "redact", "filenames", "units"}
# The queue is storage and state: how a download looks to the API or a sink lives in views.py.
# engines.py is the storage too (the engine behind the models, split off models.py for size).
QUEUE_ALLOWED = {"models", "engines", "states", "events", "errors", "redact"}
WEB_FORBIDDEN = {"worker", "watcher", "fetch", "service"}


def _imports(path):
    """Names of the daemon modules a file imports (relative imports resolved to top-level names)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = node.module.split(".")[0] if node.module else None
            if node.level == 2 or (node.level == 1 and path.parent.name == "web" and not node.module):
                base = node.module.split(".")[0] if node.module else None
            if base:
                found.add(base)
            else:
                found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("daemon."):
            found.add(node.module.split(".")[1])
    return found


def _closure(module, seen=None):
    seen = seen if seen is not None else set()
    path = PACKAGE / f"{module}.py"
    if module in seen or not path.exists():
        return seen
    seen.add(module)
    for name in _imports(path):
        _closure(name, seen)
    return seen


def test_pure_modules_import_only_pure_modules():
    for module in PURE:
        assert _imports(PACKAGE / f"{module}.py") <= PURE - {module}, module


def test_queue_knows_only_models_states_events_and_errors():
    # enqueue.py is the queue's other half (new rows for items), split off for size: same rule for both.
    for module, allowed in (("queue", QUEUE_ALLOWED | {"enqueue"}), ("enqueue", QUEUE_ALLOWED)):
        found = _imports(PACKAGE / f"{module}.py")
        assert found <= allowed, (module, found - allowed)


def test_web_never_reaches_workers_watcher_or_fetch():
    reached = set()
    for path in (PACKAGE / "web").glob("*.py"):
        for name in _imports(path):
            reached |= _closure(name)
    assert not reached & WEB_FORBIDDEN, reached & WEB_FORBIDDEN


def test_nothing_imports_the_wiring_module():
    for path in PACKAGE.rglob("*.py"):
        if path.name not in ("service.py", "cli.py"):
            assert "service" not in _imports(path), path


def test_only_the_http_layer_builds_sessions():
    """One session factory (trust_env off, User-Agent, identity encoding): no module builds its own."""
    for path in PACKAGE.rglob("*.py"):
        if path.name != "http.py":
            assert "requests.Session(" not in path.read_text(), path
