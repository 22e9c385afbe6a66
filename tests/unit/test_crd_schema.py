"""The CRD answers `kubectl explain` for every field, and refuses what the operator would choke on."""

import re

import yaml

from moe_operator.decisions.render import OWNED_ENV
from tests.paths import ROOT

CRD = yaml.safe_load((ROOT / "crds" / "modeldeployments.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def fields(schema, path="md"):
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from fields(sub, f"{path}.{name}")
    if "items" in schema:
        yield from fields(schema["items"], f"{path}[]")


def test_every_field_has_a_description():
    # the API server refuses anything but the type on metadata; kubectl explain describes it itself
    missing = [
        path for path, schema in fields(SCHEMA) if not schema.get("description") and path != "md.metadata"
    ]
    assert missing == [], f"kubectl explain would say <no description> for: {', '.join(missing)}"


def test_the_crd_refuses_every_env_name_the_operator_sets():
    env_item = SCHEMA["properties"]["spec"]["properties"]["runtime"]["properties"]["env"]["items"]
    rule = next(r["rule"] for r in env_item["x-kubernetes-validations"] if "HOME" in r["rule"])
    listed = set(rule.split("[", 1)[1].split("]", 1)[0].replace("'", "").replace(" ", "").split(","))
    assert listed == set(OWNED_ENV)


def runtime_schema():
    return SCHEMA["properties"]["spec"]["properties"]["runtime"]["properties"]


def test_the_crd_refuses_the_flags_and_variables_the_operator_sets():
    from moe_operator.decisions.runtime_config import OPERATOR_FLAGS

    def listed(rule):  # the rule's list of quoted names
        return set(re.search(r"\[('[^\]]*)\]", rule).group(1).replace("'", "").replace(" ", "").split(","))

    [args_rule] = [r["rule"] for r in runtime_schema()["args"]["items"]["x-kubernetes-validations"]]
    assert listed(args_rule) == {flag for flags in OPERATOR_FLAGS.values() for flag in flags}
    env_rules = runtime_schema()["env"]["items"]["x-kubernetes-validations"]
    [env_rule] = [r["rule"] for r in env_rules if "MOE_RUNTIME_MODEL" in r["rule"]]
    assert listed(env_rule) == set(OPERATOR_FLAGS)


def test_printer_columns_show_stable_canary_and_analysis():
    columns = {c["name"]: c["jsonPath"] for c in CRD["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Stable"] == ".status.stableRevision"
    assert columns["Canary"] == ".status.canary.revision"
    assert columns["Analysis"] == ".status.canary.phase"
