"""Read the Terraform configuration with python-hcl2 and resolve what can be known statically.

No terraform binary and no provider are needed. Values come from tfvars files
and variable defaults and flow through module calls, locals and module outputs
as Terraform would pass them. What only exists after an apply (a resource's ARN,
a data source) stays symbolic, qualified by the module that holds it, e.g.
``${codebuild:aws_codebuild_project.this.arn}``, so a check can still ask "is
this the ARN attribute of that very resource?". Strings are partly resolved:
``arn:${data.aws_partition.current.partition}:sagemaker:...:endpoint/distracted-driver``.

Supported: ``var.*``, ``local.*``, ``module.<name>.<output>``, ``each.*`` in one
instance of a ``for_each`` block (``Context.for_each_instance``), string
interpolation, ``tostring``/``lower``/``upper`` of one value, ``a * b`` /
``a + b`` of numbers, and ``[for x in <reference> : "<template>"]`` over a known
list. Anything else (function calls, conditionals, other ``for`` expressions)
stays symbolic.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import hcl2
from hcl2 import SerializationOptions

_OPTIONS = SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=True)
_REFERENCE = re.compile(r"^[A-Za-z_][\w-]*(\[\d+\])?(\.[A-Za-z_][\w-]*(\[\d+\])?)*$")
_FUNCTION = re.compile(r"^(?P<name>tostring|lower|upper)\((?P<arg>[^()]*)\)$")
_FOR_LIST = re.compile(r'^\$\{\[for (?P<name>\w+) in (?P<items>[\w.\[\]]+)\s*:\s*"(?P<template>.*)"\]\}$', re.S)
_ARITHMETIC = re.compile(r"^(?P<a>[\w.\[\]]+)\s*(?P<op>[*+])\s*(?P<b>[\w.\[\]]+)$")


class HclError(ValueError):
    """A file does not parse, or a reference names nothing."""


def parse_file(path: str | Path) -> dict:
    """The file as python-hcl2 reads it; treat the result as read-only (it is cached by content)."""
    text = Path(path).read_text()
    try:
        return _parse_text(text)
    except Exception as error:  # python-hcl2 raises lark errors of many kinds
        raise HclError(f"{path}: {error}") from None


@functools.lru_cache(maxsize=256)
def _parse_text(text: str) -> dict:
    return hcl2.loads(text, serialization_options=_OPTIONS)


@dataclass
class Module:
    """The blocks of every ``.tf`` file of one directory."""

    path: Path
    variables: dict[str, dict] = field(default_factory=dict)
    locals: dict[str, object] = field(default_factory=dict)
    resources: dict[tuple[str, str], dict] = field(default_factory=dict)
    data: dict[tuple[str, str], dict] = field(default_factory=dict)
    modules: dict[str, dict] = field(default_factory=dict)
    outputs: dict[str, dict] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> Module:
        module = cls(Path(path))
        for file in sorted(module.path.glob("*.tf")):
            module.files.append(file)
            parsed = parse_file(file)
            for block in parsed.get("variable", []):
                module.variables.update(block)
            for block in parsed.get("locals", []):
                module.locals.update(block)
            for block in parsed.get("output", []):
                module.outputs.update(block)
            for block in parsed.get("module", []):
                module.modules.update(block)
            for kind, target in (("resource", module.resources), ("data", module.data)):
                for block in parsed.get(kind, []):
                    for type_, named in block.items():
                        for name, body in named.items():
                            target[(type_, name)] = body
        return module

    def resources_of(self, type_: str) -> dict[str, dict]:
        return {name: body for (t, name), body in self.resources.items() if t == type_}


def _unresolved(text: str) -> bool:
    return isinstance(text, str) and "${" in text


@dataclass
class Context:
    """One module instance: its blocks, the values of its variables, and its name in the tree."""

    name: str  # "root" or the module call's name
    module: Module
    inputs: dict
    config: Configuration
    each: dict | None = None  # {"key": ..., "value": ...} inside one instance of a for_each resource
    _resolving: set = field(default_factory=set)

    def for_each_instance(self, body: dict, key: str) -> Context:
        """This module with ``each.key``/``each.value`` of the instance ``key`` of a ``for_each`` block."""
        instances = self.value(body.get("for_each"))
        if not isinstance(instances, dict) or key not in instances:
            raise HclError(f"{self.module.path}: no for_each instance {key!r} in {body.get('for_each')!r}")
        return Context(self.name, self.module, self.inputs, self.config, {"key": key, "value": instances[key]})

    def value(self, expression):
        """Resolve an expression as far as static knowledge goes."""
        if isinstance(expression, dict):
            return {key: self.value(item) for key, item in expression.items() if not key.startswith("__")}
        if isinstance(expression, list):
            return [self.value(item) for item in expression]
        if not isinstance(expression, str) or "${" not in expression:
            return expression
        for_list = _FOR_LIST.match(expression)
        if for_list:
            items = self.reference(for_list["items"]) if _REFERENCE.match(for_list["items"]) else None
            if isinstance(items, list):
                template = for_list["template"].replace('\\"', '"')
                return [self.value(template.replace(f"${{{for_list['name']}}}", str(item))) for item in items]
        whole = re.fullmatch(r"\$\{(.*)\}", expression, re.S)
        if whole and "${" not in whole.group(1):
            return self._expression(whole.group(1).strip())
        return self._interpolate(expression)

    def _interpolate(self, text: str) -> str:
        def substitute(match: re.Match) -> str:
            value = self._expression(match.group(1).strip())
            if isinstance(value, bool):
                return str(value).lower()
            return str(value) if not isinstance(value, (dict, list)) else match.group(0)

        return re.sub(r"\$\{([^{}]*)\}", substitute, text)

    def _expression(self, expression: str):
        if _REFERENCE.match(expression):
            return self.reference(expression)
        function = _FUNCTION.match(expression)
        if function:
            argument = self._expression(function.group("arg").strip())
            if not isinstance(argument, (dict, list)) and not _unresolved(argument):
                text = str(argument).lower() if isinstance(argument, bool) else str(argument)
                return {"tostring": text, "lower": text.lower(), "upper": text.upper()}[function.group("name")]
        arithmetic = _ARITHMETIC.match(expression)
        if arithmetic:
            a, b = (self._number(arithmetic.group(side)) for side in ("a", "b"))
            if a is not None and b is not None:
                return a * b if arithmetic.group("op") == "*" else a + b
        return f"${{{self.name}:{expression}}}"

    def _number(self, token: str):
        try:
            return float(token) if "." in token else int(token)
        except ValueError:
            value = self.reference(token) if _REFERENCE.match(token) else None
            return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def reference(self, ref: str):
        parts = ref.split(".")
        head = parts[0]
        if head == "var" and len(parts) >= 2:
            if parts[1] not in self.module.variables:
                raise HclError(f"{self.module.path}: var.{parts[1]} is not declared")
            return self._dig(self.inputs.get(parts[1]), parts[2:], ref)
        if head == "local" and len(parts) >= 2:
            if parts[1] not in self.module.locals:
                raise HclError(f"{self.module.path}: local.{parts[1]} is not defined")
            key = ("local", parts[1])
            if key in self._resolving:
                raise HclError(f"{self.module.path}: local.{parts[1]} refers to itself")
            self._resolving.add(key)
            try:
                value = self.value(self.module.locals[parts[1]])
            finally:
                self._resolving.discard(key)
            return self._dig(value, parts[2:], ref)
        if head == "each" and self.each is not None and len(parts) >= 2 and parts[1] in self.each:
            return self._dig(self.each[parts[1]], parts[2:], ref)
        if head == "path" and len(parts) == 2 and parts[1] in ("module", "root", "cwd"):
            return str(self.module.path if parts[1] == "module" else self.config.root_dir.resolve())
        if head == "module" and len(parts) >= 3:
            child = self.config.instance(parts[1])
            if parts[2] not in child.module.outputs:
                raise HclError(f"{child.module.path}: module {parts[1]} has no output {parts[2]}")
            return self._dig(child.value(child.module.outputs[parts[2]].get("value")), parts[3:], ref)
        return f"${{{self.name}:{ref}}}"

    def _dig(self, value, path: list[str], ref: str):
        for step in path:
            if isinstance(value, dict) and step in value:
                value = value[step]
            elif _unresolved(value) and value.endswith("}"):
                value = value[:-1] + f".{step}}}"
            else:
                return f"${{{self.name}:{ref}}}"
        return value


class Configuration:
    """The root module, its module calls, and variable values from a tfvars file."""

    def __init__(self, root: str | Path, tfvars: str | Path | None = None):
        self.root_dir = Path(root)
        self.root_module = Module.load(self.root_dir)
        self.tfvars = {k: v for k, v in (parse_file(tfvars) if tfvars else {}).items() if k != "__comments__"}
        defaults = {name: spec.get("default") for name, spec in self.root_module.variables.items()}
        unknown = set(self.tfvars) - set(defaults)
        if unknown:
            raise HclError(f"{tfvars}: no such variables: {', '.join(sorted(unknown))}")
        self.root = Context("root", self.root_module, {**defaults, **self.tfvars}, self)
        self._instances: dict[str, Context] = {}

    def instance(self, name: str) -> Context:
        """The module called ``name`` from the root, with its arguments resolved."""
        if name not in self._instances:
            call = self.root_module.modules.get(name)
            if call is None:
                raise HclError(f"the root module calls no module {name!r}")
            module = Module.load((self.root_dir / call["source"]).resolve())
            defaults = {var: spec.get("default") for var, spec in module.variables.items()}
            arguments = {key: value for key, value in call.items() if key in module.variables}
            missing = [var for var, spec in module.variables.items() if "default" not in spec and var not in arguments]
            if missing:
                raise HclError(f"module {name} is called without {', '.join(missing)}")
            extra = (
                set(call)
                - set(module.variables)
                - {"source", "version", "providers", "depends_on", "count", "for_each", "__comments__"}
            )
            if extra:
                raise HclError(f"module {name} is passed undeclared variables: {', '.join(sorted(extra))}")
            inputs = {**defaults, **{key: self.root.value(value) for key, value in arguments.items()}}
            self._instances[name] = Context(name, module, inputs, self)
        return self._instances[name]

    def variable(self, name: str):
        return self.root.inputs[name]

    def module_dirs(self) -> list[Path]:
        return [self.root_dir] + [
            (self.root_dir / call["source"]).resolve() for call in self.root_module.modules.values()
        ]


def example_dirs(terraform_dir: str | Path) -> list[Path]:
    """The runnable roots under ``examples/`` (``examples/<env>`` calls the root module with an env's values)."""
    return sorted(path for path in (Path(terraform_dir) / "examples").glob("*") if any(path.glob("*.tf")))


def requirements(directory: str | Path) -> tuple[str | None, dict[str, dict]]:
    """``required_version`` and ``{provider: {"source": ..., "version": ...}}`` of a module's versions.tf
    (``(None, {})`` where it has none)."""
    path = Path(directory) / "versions.tf"
    version, providers = None, {}
    for block in parse_file(path).get("terraform", []) if path.is_file() else []:
        version = block.get("required_version", version)
        for required in block.get("required_providers", []):
            providers.update({name: spec for name, spec in required.items() if not name.startswith("__")})
    return version, providers


def nested_blocks(body: dict, name: str) -> list[dict]:
    """The ``name`` blocks inside a block: written out, and the ``content`` of each ``dynamic "name"``."""
    dynamic = [spec for block in body.get("dynamic", []) for kind, spec in block.items() if kind == name]
    return list(body.get(name, [])) + [content for spec in dynamic for content in spec.get("content", [])]


def skip_comments(body: dict) -> list[tuple[str, str]]:
    """``(check id, reason)`` of the ``#checkov:skip=`` comments inside a block."""
    skips = []
    for comment in body.get("__comments__", []):
        match = re.match(r"\s*checkov:skip=([A-Z0-9_]+):?(.*)", comment.get("value", ""))
        if match:
            skips.append((match.group(1), match.group(2).strip()))
    return skips
