"""The kernel's import graph: no cycle (function-local imports included), and no kernel module
tied to one env."""
import ast
from pathlib import Path

KERNEL = Path(__file__).resolve().parents[2] / "kernel"


def imports(path: Path) -> set:
    """Every module ``path`` imports, anywhere in it (module level, functions, conditionals)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            # "from kernel import a, b" imports the submodules kernel.a and kernel.b
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def kernel_graph() -> dict:
    modules = {f"kernel.{p.stem}": p for p in KERNEL.glob("*.py") if p.stem != "__init__"}
    return {name: sorted(m for m in imports(path) if m in modules and m != name) for name, path in modules.items()}


def cycle(graph: dict) -> list | None:
    """One import cycle of ``graph`` (a list of modules, first = last), or None."""
    state: dict = {}
    path: list = []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        path.pop()
        return None

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_kernel_imports_have_no_cycle():
    assert cycle(kernel_graph()) is None, " -> ".join(cycle(kernel_graph()))


def test_the_cycle_finder_finds_a_cycle():
    assert cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


def test_no_kernel_module_is_tied_to_one_env():
    for path in KERNEL.glob("*.py"):
        env_modules = sorted(m for m in imports(path) if m.startswith("envs."))
        assert not env_modules, f"{path.name} imports {env_modules}"
