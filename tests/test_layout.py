"""The package reads as the data flow: its folders are layers, imports only go down.

    data -> models -> optim -> runtime -> engine -> strategies -> observe -> viz
         -> estimators -> cluster -> lab -> cli

A module may import from its own layer or a lower one, never a higher one, so a
newcomer can read the package bottom-up and a change to a plot cannot break a chunk
function. The check parses every module's imports (including those inside functions).
"""

import ast
from pathlib import Path

import daskgd

LAYERS = [
    "data",
    "models",
    "optim",
    "runtime",
    "engine",
    "strategies",
    "observe",
    "viz",
    "estimators",
    "cluster",
    "lab",
    "cli",
]
#: Top-level modules outside the layers: the package's lazy front door and an alias.
FRONT = {"__init__", "datasets"}
PACKAGE = Path(daskgd.__file__).parent
MAX_MODULE_LINES = 600


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def _layer(parts):
    return LAYERS.index(parts[0]) if parts and parts[0] in LAYERS else None


def _imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = node.module.split(".")
            if names[0] == "daskgd":
                if len(names) == 1:  # from daskgd import data
                    for alias in node.names:
                        yield node.lineno, [alias.name]
                else:
                    yield node.lineno, names[1:]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names = alias.name.split(".")
                if names[0] == "daskgd" and len(names) > 1:
                    yield node.lineno, names[1:]


def test_every_module_sits_in_a_layer():
    strays = [
        str(p.relative_to(PACKAGE))
        for p in _modules()
        if len(p.relative_to(PACKAGE).parts) == 1 and p.stem not in FRONT
    ] + [
        str(p.relative_to(PACKAGE))
        for p in _modules()
        if len(p.relative_to(PACKAGE).parts) > 1 and p.relative_to(PACKAGE).parts[0] not in LAYERS
    ]
    assert strays == []


def test_imports_flow_down_the_layers():
    upward = []
    for path in _modules():
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] not in LAYERS:
            continue
        own = _layer(relative.parts)
        for line, target in _imports(path):
            layer = _layer(target)
            if layer is not None and layer > own:
                upward.append(f"{relative}:{line} imports daskgd.{'.'.join(target)}")
    assert upward == []


def test_modules_stay_readable():
    long = [
        f"{p.relative_to(PACKAGE)}: {n} lines"
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert long == []


#: Lines of a function's body, its docstring not counted.
MAX_FUNCTION_LINES = 50


def _body_lines(node) -> int:
    body = node.body
    first = body[0]
    documented = isinstance(first, ast.Expr) and isinstance(
        getattr(first, "value", None), ast.Constant
    )
    start = body[1].lineno if documented and len(body) > 1 else first.lineno
    return node.end_lineno - start + 1


def test_functions_stay_short():
    long = [
        f"{p.relative_to(PACKAGE)}:{node.lineno} {node.name}: {n} lines"
        for p in _modules()
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and (n := _body_lines(node)) > MAX_FUNCTION_LINES
    ]
    assert long == []
