"""Writes docs/modeldeployment-reference.md from the CRD's schema: every field, its type, default and
description, in the order of the schema. tests/unit/test_crd_reference.py fails when the file drifts.

    python hack/crd_reference.py            # rewrite the file
    python hack/crd_reference.py --check    # exit 1 when it is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "crds" / "modeldeployments.yaml"
OUT = ROOT / "docs" / "modeldeployment-reference.md"

HEADER = """# ModelDeployment reference

`moedeploy.dev/v1alpha1`, kind `ModelDeployment` (short names `md`, `mdep`). Generated from
[crds/modeldeployments.yaml](../crds/modeldeployments.yaml) by `python hack/crd_reference.py`; do not edit by
hand. `kubectl explain md.spec.<field>` shows the same descriptions.

Rules across fields (the API server refuses an object that breaks one, naming the field):

{rules}

| field | type | default | description |
|---|---|---|---|
"""


def type_of(schema: dict) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = schema.get("type", "object")
    if kind == "array":
        return f"[]{type_of(schema.get('items', {}))}"
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    return kind


def limits(schema: dict) -> str:
    parts = []
    for key, text in (("minimum", ">= {}"), ("maximum", "<= {}"), ("maxLength", "at most {} characters"),
                      ("maxItems", "at most {} items")):  # fmt: skip
        if key in schema:
            value = schema[key]
            if key == "minimum" and schema.get("exclusiveMinimum"):
                parts.append(f"> {value}")
            else:
                parts.append(text.format(value))
    return f" ({', '.join(parts)})" if parts else ""


def rows(schema: dict, path: str):
    for name, sub in (schema.get("properties") or {}).items():
        here = f"{path}.{name}" if path else name
        default = f"`{json.dumps(sub['default'])}`" if "default" in sub else ""
        description = (sub.get("description") or "").replace("|", "\\|").replace("\n", " ")
        yield f"| `{here}` | {type_of(sub)} | {default} | {description}{limits(sub)} |"
        if sub.get("type") == "array" and "items" in sub:
            yield from rows(sub["items"], f"{here}[]")
        else:
            yield from rows(sub, here)


def rules(schema: dict, path: str = ""):
    for rule in schema.get("x-kubernetes-validations") or ():
        yield f"- `{path or '.'}`: {rule['message']}"
    for name, sub in (schema.get("properties") or {}).items():
        here = f"{path}.{name}" if path else name
        yield from rules(sub.get("items", sub) if sub.get("type") == "array" else sub, here)


def render() -> str:
    crd = yaml.safe_load(CRD.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec, status = schema["properties"]["spec"], schema["properties"]["status"]
    text = HEADER.format(rules="\n".join(rules(spec, "spec")))
    text += "\n".join(rows(spec, "spec")) + "\n\n## Status (written by the operator)\n\n"
    text += "| field | type | default | description |\n|---|---|---|---|\n"
    text += "\n".join(rows(status, "status")) + "\n"
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(
                f"{OUT.relative_to(ROOT)} is out of date: run python hack/crd_reference.py", file=sys.stderr
            )
            return 1
        return 0
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text)
    print(OUT.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
