"""Every resource and data block of terraform/ against the AWS provider's own schema.

The schema comes from ``cdktf-cdktf-provider-aws`` on PyPI, which is generated from
the provider's schema (``terraform providers schema -json``) for one provider
release: its jsii assembly (``.jsii`` inside the wheel) has, for each resource and
data source, a config struct whose properties are the block's arguments, each
documented with the registry link ``…/docs/resources/<type>#<argument>``, and whose
nested blocks are structs of their own. ``make provider-schema`` downloads the
wheels the Makefile names (nothing is imported or run from them) and ``extract``
turns each into a compact JSON file: ``{"provider_version", "resource": {type:
block}, "data": {type: block}}`` with ``block = {"attributes": {name: required},
"blocks": {name: block}}``.

``findings`` walks each ``.tf`` file (python-hcl2, which marks blocks) and checks,
for each schema: the type exists; every argument is an attribute or a nested block
of that type (meta-arguments aside); every required attribute is set; nested
blocks (``dynamic`` ones through their ``content``) recursively the same.
"""

from __future__ import annotations

import io
import json
import re
import sys
import tarfile
import zipfile
from pathlib import Path

import hcl2
from hcl2 import SerializationOptions

from distracted_driver.infra.findings import Finding

SCHEMA_DIR = Path(".venvs") / "provider-schema"
ASSEMBLY = "@cdktf/provider-aws"
_LINK = re.compile(
    r"registry\.terraform\.io/providers/hashicorp/aws/(?P<version>[\d.]+)/docs/"
    r"(?P<kind>resources|data-sources)/(?P<type>\w+)(?:#(?P<argument>\w+))?"
)
META_ARGUMENTS = {"count", "for_each", "depends_on", "provider", "lifecycle", "provisioner", "connection"}


# --- extraction from the jsii assembly ------------------------------------------------------------


def read_assembly(wheel: str | Path) -> dict:
    """The ``.jsii`` assembly inside the wheel's ``_jsii/*.jsii.tgz`` (read in memory, nothing unpacked)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(archive.read(name)), mode="r:gz") as tar:
            return json.load(tar.extractfile("package/.jsii"))


def _link(docs: dict) -> re.Match | None:
    return _LINK.search(f"{docs.get('summary', '')} {docs.get('remarks', '')}")


def _struct_of(type_ref: dict, types: dict) -> str | None:
    """The provider struct a property's type names (directly, in a collection, or in a union), if any."""
    if "fqn" in type_ref:
        fqn = type_ref["fqn"]
        return fqn if fqn.startswith(ASSEMBLY) and types.get(fqn, {}).get("datatype") else None
    if "collection" in type_ref:
        return _struct_of(type_ref["collection"]["elementtype"], types)
    if "union" in type_ref:
        for member in type_ref["union"]["types"]:
            found = _struct_of(member, types)
            if found:
                return found
    return None


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _block(fqn: str, types: dict, seen: tuple = ()) -> dict:
    attributes, blocks = {}, {}
    for prop in types[fqn].get("properties", []):
        link = _link(prop.get("docs", {}))
        name = link["argument"] if link and link["argument"] else _snake(prop["name"])
        struct = _struct_of(prop["type"], types)
        if struct and struct not in seen:
            blocks[name] = _block(struct, types, seen + (struct,))
        else:
            attributes[name] = not prop.get("optional", False)
    return {"attributes": attributes, "blocks": blocks}


def extract(assembly: dict) -> dict:
    """The compact schema of every resource and data source in the assembly."""
    types = assembly["types"]
    schema = {"package_version": assembly["version"], "provider_version": None, "resource": {}, "data": {}}
    for fqn, type_ in types.items():
        if type_.get("kind") != "class" or not fqn.startswith(ASSEMBLY):
            continue
        link = _link(type_.get("docs", {}))
        config = f"{fqn}Config"
        if not link or link["argument"] or config not in types:
            continue
        kind = "resource" if link["kind"] == "resources" else "data"
        schema[kind][f"aws_{link['type']}"] = _block(config, types)
        schema["provider_version"] = schema["provider_version"] or link["version"]
    return schema


def build(wheel: str | Path, out_dir: str | Path) -> Path:
    """Extract one wheel's schema to ``<out_dir>/aws-<provider version>.json``."""
    schema = extract(read_assembly(wheel))
    out = Path(out_dir) / f"aws-{schema['provider_version']}.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(schema, sort_keys=True))
    tmp.replace(out)
    return out


# --- checking the configuration -------------------------------------------------------------------


def _parse(path: Path) -> dict:
    options = SerializationOptions(strip_string_quotes=True, explicit_blocks=True, with_comments=False)
    return hcl2.loads(path.read_text(), serialization_options=options)


def _check_block(body: dict, schema: dict, where: str, top: bool) -> list[str]:
    problems = []
    present = set()
    for key, value in body.items():
        if key.startswith("__"):
            continue
        if top and key in META_ARGUMENTS:
            continue
        if key == "dynamic":
            for dynamic in value:
                for name, spec in dynamic.items():
                    if name.startswith("__"):
                        continue
                    if name not in schema["blocks"]:
                        problems.append(f"{where}: no block {name!r} to make dynamic")
                        continue
                    for content in spec.get("content", []):
                        problems += _check_block(content, schema["blocks"][name], f"{where}.{name}", False)
            continue
        present.add(key)
        if key in schema["attributes"]:
            continue
        if key in schema["blocks"]:
            for instance in value if isinstance(value, list) else [value]:
                if isinstance(instance, dict):
                    problems += _check_block(instance, schema["blocks"][key], f"{where}.{key}", False)
            continue
        problems.append(f"{where}: unknown argument {key!r}")
    missing = [name for name, required in schema["attributes"].items() if required and name not in present]
    problems += [f"{where}: required argument {name!r} is missing" for name in missing]
    return problems


def findings(terraform_dir: str | Path, schema: dict) -> list[Finding]:
    """Each resource and data block of every module, checked against ``schema`` (``infra.check.Finding``s whose
    check is the block and whose variant is the provider release)."""
    version = f"aws {schema['provider_version']}"
    results = []
    for path in sorted(Path(terraform_dir).rglob("*.tf")):
        if ".terraform" in path.parts:
            continue
        parsed = _parse(path)
        for kind in ("resource", "data"):
            for block in parsed.get(kind, []):
                for type_, named in block.items():
                    if type_.startswith("__") or not type_.startswith("aws_"):
                        continue
                    for name, body in named.items():
                        if name.startswith("__"):
                            continue
                        where = f"{path.relative_to(terraform_dir)} {'data.' if kind == 'data' else ''}{type_}.{name}"
                        known = schema[kind].get(type_)
                        if known is None:
                            results.append(Finding(where, False, f"the provider has no {kind} {type_}", version))
                            continue
                        problems = _check_block(body, known, f"{type_}.{name}", True)
                        results.append(
                            Finding(
                                where,
                                not problems,
                                "; ".join(problems) or "every argument and block is in the schema",
                                version,
                            )
                        )
    return results


def schemas(directory: str | Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(Path(directory).glob("aws-*.json"))]


def main(argv: list[str] | None = None) -> int:
    """``python -m distracted_driver.infra.provider_schema OUT_DIR WHEEL...`` (what ``make provider-schema`` runs)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print("usage: python -m distracted_driver.infra.provider_schema OUT_DIR WHEEL...", file=sys.stderr)
        return 2
    for wheel in args[1:]:
        out = build(wheel, args[0])
        print(f"{wheel} → {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
