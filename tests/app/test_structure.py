"""The shape of the package, checked: each concept has one home (the wire format in
wire.py, the client library under _amqp/), modules and functions stay small, and
the public names are a short sorted list."""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from radon.complexity import cc_rank, cc_visit  # type: ignore[import-untyped]

import rabbitworker
from rabbitworker import wire

PACKAGE = Path(rabbitworker.__file__).parent
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50


def modules() -> Iterator[Path]:
    yield from sorted(PACKAGE.rglob("*.py"))


def strings(path: Path) -> set[str]:
    """Every string literal in a module, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    }


def wire_names() -> set[str]:
    """The header names and content type wire.py defines."""
    names = {
        value
        for name, value in vars(wire).items()
        if name.isupper() and isinstance(value, str) and name != "DIRECT_REPLY_TO"
    }
    return names | {"x-death", "x-delivery-count"}


def test_no_header_name_or_content_type_is_written_outside_wire_py() -> None:
    names = wire_names()
    assert {"x-attempt", "x-error-type", "application/json", "rw-delay-ms"} <= names
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(strings(path) & names)
        for path in modules()
        if path.name != "wire.py"
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_every_move_of_a_delivery_is_the_one_move_operation() -> None:
    """Retries, dead letters, hand-backs, crash suspects and replays all move a
    delivery with `rabbitworker.move.move`, the only code that copies one."""
    import inspect

    from rabbitworker import dlq
    from rabbitworker.worker import dispatch, settlement, suspects

    moves: list[Any] = [
        settlement.Settlement.retry,
        settlement.Settlement.dead_letter,
        dlq.replay,
        suspects.Suspects.move,
        suspects.Suspects.crashed,
        dispatch.Dispatcher.hand_back,
    ]
    for fn in moves:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        assert "move" in used, fn.__qualname__
    copiers = [
        str(path.relative_to(PACKAGE))
        for path in modules()
        if "copy_properties(" in path.read_text() and path.name != "wire.py"
    ]
    assert copiers == ["move.py"]
    # Properties are built in wire.py and converted in _amqp/properties.py, nowhere else.
    builders = [
        str(path.relative_to(PACKAGE))
        for path in modules()
        if "Properties(" in path.read_text()
        and path.name not in ("wire.py", "properties.py", "headers.py")
    ]
    assert builders == []


def test_nothing_is_looked_up_on_a_transport_with_getattr() -> None:
    """The `Transport` protocol declares all the package uses of a broker: a
    `getattr(transport, ...)` would be an operation missing from it."""
    probes = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
                and node.args
                and "transport" in ast.unparse(node.args[0]).lower()
            ):
                probes.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert probes == []


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_the_client_library_is_imported_under_amqp_only() -> None:
    client = {"aio_pika", "aiormq", "pamqp"}
    outside = {
        str(path.relative_to(PACKAGE)): sorted(imports(path) & client)
        for path in modules()
        if "_amqp" not in path.parts
    }
    assert {k: v for k, v in outside.items() if v} == {}


def test_no_module_is_over_four_hundred_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_is_over_fifty_lines() -> None:
    long = {}
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(PACKAGE)}:{node.name}"] = lines
    assert long == {}


def test_no_function_is_of_complexity_grade_c_or_worse() -> None:
    complex_ = {
        f"{path.relative_to(PACKAGE)}:{block.name}": cc_rank(block.complexity)
        for path in modules()
        for block in cc_visit(path.read_text())
        if cc_rank(block.complexity) >= "C"
    }
    assert complex_ == {}


@pytest.mark.parametrize("path", list(modules()), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_says_what_it_owns_and_lists_its_names(path: Path) -> None:
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), "a module opens with a docstring saying what it owns"
    if path.name not in ("__main__.py", "__about__.py"):
        assigned = {
            target.id
            for node in tree.body
            if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        assert "__all__" in assigned
