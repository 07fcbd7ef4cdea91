"""The parameters of a Hydra `_target_`, read from its source file without importing it.

Importing a model or Lightning's Trainer costs the framework's import time (about 7 s on two CPU cores); the
config check that runs before it reads the same `__init__` statically instead, with `ast`: its parameter names,
their defaults (where they are literals), whether it takes `**kwargs`, and the `check_positive_int` calls at
the top of its body; and class-level constants (`num_classes = 10`). Names re-exported by a package's
`__init__.py` (`lightning.pytorch.Trainer`) are followed to the module that defines them, and a class without
its own `__init__` to its first base.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

NO_DEFAULT = object()


@dataclass(frozen=True)
class Parameters:
    """What a callable accepts: names with their literal defaults (NO_DEFAULT where none or not a literal),
    whether it takes **kwargs, simple annotations ("int", "float", "bool", "str", optional with "| None"), and
    the arguments its body passes to `check_positive_int` (name -> zero allowed)."""

    defaults: dict[str, Any]
    var_keyword: bool = False
    annotations: dict[str, str] = field(default_factory=dict)
    positive: dict[str, bool] = field(default_factory=dict)


def module_file(module: str) -> Path | None:
    """The source file of `module`, found from its top-level package without importing anything below it."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        origin = Path(spec.origin) if spec and spec.origin else None  # "frozen" or "built-in" for some stdlib
        return origin if origin is not None and origin.suffix == ".py" and origin.is_file() and not rest else None
    base = Path(next(iter(spec.submodule_search_locations))).joinpath(*rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def parse(path: Path) -> ast.Module:
    try:
        return ast.parse(path.read_text(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return ast.Module(body=[], type_ignores=[])  # unreadable: nothing defined, nothing checked


def find_definition(module: str, name: str, depth: int = 0) -> tuple[str, ast.AST] | None:
    """The (module, node) that defines `name` as seen from `module`, following `from x import name`."""
    path = module_file(module)
    if path is None or depth > 5:
        return None
    tree = parse(path)
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name:
            return module, node
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            original = next(a.name for a in node.names if (a.asname or a.name) == name)
            source = node.module or ""
            if node.level:  # a relative import: from .x import y
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                source = f"{package}.{source}" if source else package
            return find_definition(source, original, depth + 1)
    return None


def literal(node: ast.AST | None) -> Any:
    try:
        return ast.literal_eval(node) if node is not None else NO_DEFAULT
    except ValueError:
        return NO_DEFAULT


def annotation(node: ast.AST | None) -> str | None:
    """'int', 'float', 'bool', 'str', optionally + ' | None', for the annotations worth checking; else None."""
    text = ast.unparse(node) if node is not None else ""
    text = text.strip("'\"")
    if text.startswith("Optional[") and text.endswith("]"):  # Lightning's spelling of `int | None`
        text = f"{text[len('Optional[') : -1]} | None"
    base = text.removesuffix(" | None")
    return text if base in ("int", "float", "bool", "str") else None


def positive_checks(function: ast.FunctionDef) -> dict[str, bool]:
    """`check_positive_int("name", name[, allow_zero=True])` calls in the function body: name -> zero allowed."""
    found = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "check_positive_int":
            name = literal(node.args[0]) if node.args else NO_DEFAULT
            allow_zero = any(k.arg == "allow_zero" and literal(k.value) is True for k in node.keywords)
            if len(node.args) > 2:
                allow_zero = literal(node.args[2]) is True
            if isinstance(name, str):
                found[name] = allow_zero
    return found


def helper_checks(module: str, function: ast.FunctionDef) -> dict[str, bool]:
    """The `check_positive_int` calls of the module's own functions that `function` calls (`check_hparams`)."""
    path = module_file(module)
    helpers = {n.name: n for n in parse(path).body if isinstance(n, ast.FunctionDef)} if path else {}
    found: dict[str, bool] = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in helpers:
            found.update(positive_checks(helpers[node.func.id]))
    return found


def function_parameters(function: ast.FunctionDef, skip_first: bool) -> Parameters:
    args = function.args
    positional = [*args.posonlyargs, *args.args][1 if skip_first else 0 :]
    defaults = [NO_DEFAULT] * (len(positional) - len(args.defaults)) + [literal(d) for d in args.defaults]
    names = [a.arg for a in positional] + [a.arg for a in args.kwonlyargs]
    values = defaults + [literal(d) for d in args.kw_defaults]
    everything = positional + args.kwonlyargs
    return Parameters(
        defaults=dict(zip(names, values, strict=True)),
        var_keyword=args.kwarg is not None,
        annotations={a.arg: t for a in everything if (t := annotation(a.annotation))},
        positive=positive_checks(function),
    )


@cache
def target_parameters(target: str) -> Parameters | None:
    """The parameters of the class or function `target` ("package.module.Name"); None where its source cannot
    be read (then nothing is checked statically and the constructor's own checks still run)."""
    module, _, name = target.rpartition(".")
    found = find_definition(module, name) if module else None
    if found is None:
        return None
    where, node = found
    if isinstance(node, ast.FunctionDef):
        return function_parameters(node, skip_first=False)
    methods = {n.name: n for n in node.body if isinstance(n, ast.FunctionDef)}
    init = methods.get("__init__", methods.get("__new__"))
    own = function_parameters(init, skip_first=True) if init is not None else None
    if own is not None:
        own.positive.update(helper_checks(where, init))
    if own is not None and not (own.var_keyword and passes_kwargs_to_super(init)):
        return own
    base = base_parameters(where, node)
    if own is None or base is None:
        return base if own is None else own
    return Parameters(  # __init__(self, x, **kwargs) calling super().__init__(**kwargs): both sets of names
        defaults={**base.defaults, **own.defaults},
        var_keyword=base.var_keyword,
        annotations={**base.annotations, **own.annotations},
        positive={**base.positive, **own.positive},
    )


def passes_kwargs_to_super(init: ast.FunctionDef) -> bool:
    """Whether `__init__` calls `super().__init__(..., **kwargs)` with its own **kwargs."""
    kwarg = init.args.kwarg.arg if init.args.kwarg else None
    for node in ast.walk(init):
        is_init = isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "__init__"
        if is_init and any(k.arg is None and getattr(k.value, "id", None) == kwarg for k in node.keywords):
            return True
    return False


def base_parameters(module: str, node: ast.ClassDef) -> Parameters | None:
    """The parameters of the class's first base, or empty ones for a plain class."""
    base_name = ast.unparse(node.bases[0]) if node.bases else ""
    if not base_name or base_name in ("object", "Protocol"):
        return Parameters(defaults={})
    short = base_name.rpartition(".")[2]
    resolved = find_definition(module, short)
    return target_parameters(f"{resolved[0]}.{resolved[1].name}") if resolved else None


def class_attribute(target: str, name: str) -> Any:
    """The literal class-level `name = <literal>` (or `name: T = <literal>`) of the class `target`, looked up
    through its first bases as Python would; NO_DEFAULT where none is found."""
    module, _, class_name = target.rpartition(".")
    found = find_definition(module, class_name) if module else None
    if found is None or not isinstance(found[1], ast.ClassDef):
        return NO_DEFAULT
    where, node = found
    for statement in node.body:
        targets = statement.targets if isinstance(statement, ast.Assign) else [getattr(statement, "target", None)]
        if isinstance(statement, (ast.Assign, ast.AnnAssign)) and any(getattr(t, "id", None) == name for t in targets):
            return literal(statement.value)
    base = find_definition(where, ast.unparse(node.bases[0]).rpartition(".")[2]) if node.bases else None
    return class_attribute(f"{base[0]}.{base[1].name}", name) if base else NO_DEFAULT


def module_constant(module: str, name: str) -> Any:
    """The literal value of the module-level `name = <literal>` in `module`'s source; None if there is none."""
    path = module_file(module)
    if path is None:
        return None
    for node in parse(path).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            value = literal(node.value)
            return None if value is NO_DEFAULT else value
    return None
