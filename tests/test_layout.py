"""The package's floors hold: no import circle anywhere, nothing imports upward, faces only re-export.

Every import counts, the ones inside functions too. The floors (README, "How the code is laid out"), bottom up:

    0  prefopt.losses, prefopt.chat, prefopt._quiet / _cache / _progress / _lazy   (import nothing of prefopt above)
    1  prefopt.data                                        (imports only prefopt.chat)
    2  prefopt.config, prefopt.logprobs, prefopt.models, prefopt.distributed
    3  prefopt.training                                    (the Trainer and its collaborators)
    4  prefopt.online                                      (sampling, rewards, annotation, ranking, evaluation, rounds)
    5  prefopt.callbacks, prefopt.methods, prefopt.main_job
    6  prefopt.cli
       faces: every package __init__ of prefopt/ and the module faces prefopt.rewards / reasoning / fields / fdpg,
       above every floor: users import them, the package's own modules never do.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = {"prefopt": "prefopt", "losses": "prefopt.losses", "data": "prefopt.data"}
FLOORS = {
    "prefopt.losses": 0, "prefopt.chat": 0, "prefopt._quiet": 0, "prefopt._cache": 0, "prefopt._progress": 0,
    "prefopt._lazy": 0,
    "prefopt.data": 1,
    "prefopt.config": 2, "prefopt.logprobs": 2, "prefopt.models": 2, "prefopt.distributed": 2,
    "prefopt.training": 3,
    "prefopt.online": 4,
    "prefopt.callbacks": 5, "prefopt.methods": 5, "prefopt.main_job": 5,
    "prefopt.cli": 6,
}
FACE_FLOOR = 7
MODULE_FACES = {"prefopt", "prefopt.rewards", "prefopt.reasoning", "prefopt.fields", "prefopt.fdpg", "prefopt.__main__"}
# Packages below prefopt's own floors whose __init__ is an eager face of their own modules.
EAGER_FACES = {"prefopt.losses", "prefopt.data"}
MAX_CLASS_LINES = 350


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in SOURCE_FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


MODULES = _modules()


def _is_face(name: str) -> bool:
    if name in MODULE_FACES:
        return True
    return MODULES[name].name == "__init__.py" and name not in EAGER_FACES and name.startswith("prefopt.") \
        and not name.startswith(("prefopt.losses", "prefopt.data"))


def _floor(name: str) -> int:
    if _is_face(name):
        return FACE_FLOOR
    matches = [prefix for prefix in FLOORS if name == prefix or name.startswith(prefix + ".")]
    assert matches, f"{name} has no floor: add it to FLOORS (and to the README's layout section)"
    return FLOORS[max(matches, key=len)]


def _imports(name: str, path: Path):
    """(imported module, line, inside a function, the source line and the one above) of every import in the file."""
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(inner) for inner in ast.walk(node) if inner is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES else module for alias in node.names]
        else:
            continue
        context = " ".join(lines[max(0, node.lineno - 2) : node.lineno])
        for target in targets:
            if target in MODULES and target != name:
                yield target, node.lineno, id(node) in in_function, context


GRAPH = {name: sorted({target for target, *_ in _imports(name, path)}) for name, path in MODULES.items()}


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for neighbour in graph[node]:
            if neighbour not in index:
                visit(neighbour)
                low[node] = min(low[node], low[neighbour])
            elif neighbour in on_stack:
                low[node] = min(low[node], index[neighbour])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_anywhere_in_the_package():
    assert _cycles(GRAPH) == []


def test_the_circle_check_finds_a_circle():
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]


def test_nothing_imports_upward():
    upward = [f"{name} (floor {_floor(name)}) imports {target} (floor {_floor(target)})"
              for name, targets in GRAPH.items() if not _is_face(name) for target in targets if _floor(target) > _floor(name)]
    assert upward == []


def test_imports_inside_functions_are_only_for_start_up_time_and_say_so():
    """A prefopt import placed inside a function would hide a dependency; the only ones left keep start-up time
    down (a comment says so), and evaluate's metric scripts, which evaluate loads as modules of their own."""
    hidden = [f"{MODULES[name].relative_to(ROOT)}:{line}"
              for name, path in MODULES.items() for target, line, local, context in _imports(name, path)
              if local and "start-up time" not in context and not name.startswith("prefopt.data.metrics")]
    assert hidden == []


@pytest.mark.parametrize("face", sorted(name for name in MODULES if _is_face(name) and MODULES[name].name == "__init__.py"))
def test_package_faces_only_re_export_and_every_name_resolves(face):
    """A package __init__ holds a docstring and a table of names -> defining modules (prefopt._lazy), nothing else;
    each name of the table exists where the table says."""
    tree = ast.parse(MODULES[face].read_text())
    for statement in tree.body:
        allowed = isinstance(statement, (ast.Import, ast.ImportFrom, ast.Assign)) or (
            isinstance(statement, ast.Expr) and isinstance(statement.value, (ast.Constant, ast.Call)))
        assert allowed, f"{face}: {ast.unparse(statement)[:80]} is more than a re-export"
    module = importlib.import_module(face)
    for name in getattr(module, "_TABLE", {}):
        assert getattr(module, name) is not None, f"{face}.{name}"
        assert name not in {path.stem for path in MODULES[face].parent.glob("*.py")}, (
            f"{face}: the face name {name!r} is also a submodule; importing the submodule would shadow it")


def test_no_module_of_the_package_imports_a_face():
    importers = [f"{name} imports the face {target}" for name, targets in GRAPH.items() if not _is_face(name)
                 for target in targets if _is_face(target)]
    assert importers == []


def test_no_class_is_longer_than_350_lines():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long == []


def test_nothing_outside_training_reaches_into_private_state_of_the_trainer_trl_or_transformers():
    """Collaborators get what they need (a FieldContext, prepare_dataset, log_values, a Reference); only modules of
    prefopt.training touch private attributes of the Trainer, TRL, transformers or accelerate."""
    owners = ("trainer", "model", "accelerator", "tokenizer", "trl", "transformers", "state")
    reaches = []
    for name, path in MODULES.items():
        if name.startswith("prefopt.training") or not name.startswith("prefopt"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = ast.unparse(node.value)
                if base not in ("self", "cls") and any(owner in base.lower() for owner in owners):
                    reaches.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert reaches == []


def test_hooks_are_found_by_protocol_not_by_attribute():
    for name in ("prefopt.training.trainer", "prefopt.training.state", "prefopt.training.fields"):
        assert "hasattr(" not in MODULES[name].read_text(), name
