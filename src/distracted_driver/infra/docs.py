"""The inputs and outputs tables of terraform/'s READMEs, written from the .tf files.

Each module's README (and terraform/README.md, the root module's) ends with a section
between ``BEGIN`` and ``END`` that ``inv infra.docs`` writes from the module's
``variable`` and ``output`` blocks, read with python-hcl2 (``infra.hcl``); everything
above it is prose written by hand. ``stale`` names each README whose section differs
from what the .tf files say (``inv infra.check`` and tests/test_terraform.py fail on one).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from distracted_driver.fsutil import atomic_path
from distracted_driver.infra.hcl import Module

BEGIN = "<!-- BEGIN inputs and outputs: written by `inv infra.docs` from the .tf files (edit those, not this) -->"
END = "<!-- END inputs and outputs -->"
_SECTION = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.S)


def module_dirs(terraform_dir: str | Path) -> list[Path]:
    """The root module and every module under ``modules/``."""
    terraform_dir = Path(terraform_dir)
    return [terraform_dir] + sorted(
        path for path in (terraform_dir / "modules").iterdir() if path.is_dir() and any(path.glob("*.tf"))
    )


def literal(value) -> str:
    """A value as HCL writes it (``null``, ``true``, ``"text"``, ``["a", 1]``, ``{ key = "value" }``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(literal(item) for item in value) + "]"
    if isinstance(value, dict):
        items = [f"{key} = {literal(item)}" for key, item in value.items() if not key.startswith("__")]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    return str(value)


def _one_line(text) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")  # a table cell: one line, no column break


def _cell(text) -> str:
    return _one_line(text).replace("<", "\\<")  # <name> is a placeholder, not an HTML tag


def _code(text) -> str:
    return f"`{_one_line(text)}`"


def _type(spec: dict) -> str:
    written = str(spec.get("type", "any"))
    return written[2:-1] if written.startswith("${") and written.endswith("}") else written


def tables(module: Module) -> str:
    """The section: an inputs table (name, type, default or "required", description) and an outputs table."""
    lines = [BEGIN, "", "## Inputs", ""]
    if module.variables:
        lines += ["| name | type | default | description |", "|---|---|---|---|"]
        for name, spec in module.variables.items():
            default = _code(literal(spec["default"])) if "default" in spec else "required"
            sensitive = " (sensitive)" if spec.get("sensitive") is True else ""
            lines.append(
                f"| `{name}` | {_code(_type(spec))} | {default} | {_cell(spec.get('description', ''))}{sensitive} |"
            )
    else:
        lines.append("None.")
    lines += ["", "## Outputs", ""]
    if module.outputs:
        lines += ["| name | description |", "|---|---|"]
        for name, spec in module.outputs.items():
            sensitive = " (sensitive)" if spec.get("sensitive") is True else ""
            lines.append(f"| `{name}` | {_cell(spec.get('description', ''))}{sensitive} |")
    else:
        lines.append("None.")
    return "\n".join(lines + ["", END, ""])


def with_tables(readme: str, module: Module) -> str:
    """The README with its section replaced, or added at its end where it has none."""
    section = tables(module)
    if _SECTION.search(readme):
        return _SECTION.sub(lambda _: section, readme, count=1)
    return readme.rstrip("\n") + "\n\n" + section


def _readme(directory: Path) -> tuple[Path, str, str]:
    path = directory / "README.md"
    text = path.read_text() if path.is_file() else f"# {directory.name}\n"
    return path, text, with_tables(text, Module.load(directory))


def stale(terraform_dir: str | Path) -> list[Path]:
    """The READMEs whose section is missing or differs from the module's variables and outputs."""
    return [path for path, text, wanted in map(_readme, module_dirs(terraform_dir)) if text != wanted]


def write(terraform_dir: str | Path) -> list[Path]:
    """Rewrite every stale README's section; the READMEs changed."""
    changed = []
    for path, text, wanted in map(_readme, module_dirs(terraform_dir)):
        if text != wanted:
            with atomic_path(path) as tmp:
                tmp.write_text(wanted)
            changed.append(path)
    return changed
