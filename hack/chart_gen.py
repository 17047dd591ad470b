"""Generate the chart's derived files; `--check` fails when a committed one is stale.

    .venv/bin/python hack/chart_gen.py           # write
    .venv/bin/python hack/chart_gen.py --check   # CI / tests/unit/test_chart_template.py

What it writes (never edit these by hand):
- charts/loraf-operator/values.schema.json: a strict JSON schema derived from values.yaml.
  Every key needs a `# -- description` comment right above it (helm-docs style); types come
  from the default value; a `# @schema {...}` comment line merges extra JSON schema (enums,
  item types, free-form maps). Objects get `additionalProperties: false`, so a misspelled
  key fails `helm install`.
- charts/loraf-operator/files/rbac.yaml: the operator's rules from
  operator/loraf_operator/rbac_rules.py (the same set as config/rbac/operator.yaml), split
  by scope for the chart's namespaced mode.
- charts/loraf-operator/files/trainer-status-policy.yaml: the ValidatingAdmissionPolicy
  that lets a run's ServiceAccount change only status.progress, copied from
  config/policy/trainer-status.yaml.
- charts/loraf-operator/crds/{clusterkopfpeerings,kopfpeerings}.kopf.dev.yaml: the kopf
  peering CRDs (leader election) copied from config/kopf-peering.yaml.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from loraf_operator.api.models import QUANTITY_PATTERN, URL_PATTERN  # noqa: E402
from loraf_operator.rbac_rules import RULES  # noqa: E402

CHART = ROOT / "charts" / "loraf-operator"
VALUES = CHART / "values.yaml"
SCHEMA = CHART / "values.schema.json"
RBAC = CHART / "files" / "rbac.yaml"
PEERING_SRC = ROOT / "config" / "kopf-peering.yaml"
POLICY_SRC = ROOT / "config" / "policy" / "trainer-status.yaml"
POLICY = CHART / "files" / "trainer-status-policy.yaml"

# Cluster-scoped resources in the rule set: a Role cannot grant them.
CLUSTER_SCOPED = {"customresourcedefinitions", "namespaces", "clusterkopfpeerings"}
# Not needed at all in namespaced mode, and why (kept out of its ClusterRole).
# (`namespaces` list/watch stays: kopf lists namespaces whenever it is not cluster-wide,
# even for exact names, and without the permission it retries the 403 for about a minute
# at every start before falling back to the names it was given.)
UNNEEDED_NAMESPACED = {
    "clusterkopfpeerings": "namespaced operators use a KopfPeering in each watched namespace",
}

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?P<rest>.*)$")


# -------------------------------------------------------------------------- values schema


@dataclass
class _Doc:
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _key_docs(text: str) -> dict[tuple[str, ...], _Doc]:
    """Map each key path of values.yaml to the comment block right above it.

    values.yaml keeps to block mappings (lists only as flow `[]` or inside a documented
    key), so indentation alone gives the path.
    """
    docs: dict[tuple[str, ...], _Doc] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        if not stripped or stripped.startswith("- "):
            pending = []  # a blank line ends a comment block; list items carry no docs
            continue
        m = _KEY.match(line)
        if not m:
            raise SystemExit(f"values.yaml: cannot place line {line!r}")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = (*(k for _, k in stack), m["key"])
        doc = _Doc()
        desc: list[str] = []
        for c in pending:
            if c.startswith("@schema"):
                doc.extra.update(json.loads(c.removeprefix("@schema").strip()))
            elif c.startswith("--"):
                desc = [c.removeprefix("--").strip()]
            elif desc:
                desc.append(c)
        doc.description = " ".join(desc).strip()
        docs[path] = doc
        pending = []
        stack.append((indent, m["key"]))
    return docs


def _type_of(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    if isinstance(value, list):
        return {"type": "array"}
    if isinstance(value, dict):
        return {"type": "object"}
    raise SystemExit(f"values.yaml: give {value!r} a type with # @schema")


def _schema_for(value: Any, path: tuple[str, ...], docs: dict[tuple[str, ...], _Doc]) -> Any:
    doc = docs.get(path) or _Doc()
    extra = dict(doc.extra)
    freeform = "additionalProperties" in extra or extra.get("type") not in (None, "object")
    group = isinstance(value, dict) and not freeform
    # Every value is documented; a group of values (a nested mapping) may go without.
    if path and not group and not doc.description:
        raise SystemExit(f"values.yaml: {'.'.join(path)} has no '# -- description' comment")
    node: dict[str, Any] = {"description": doc.description} if doc.description else {}
    if "type" not in extra:
        node.update(_type_of(value))
    if group:
        node["properties"] = {k: _schema_for(v, (*path, k), docs) for k, v in value.items()}
        node["additionalProperties"] = False
    node.update(extra)
    return node


def values_schema(text: str) -> dict[str, Any]:
    values = yaml.safe_load(text)
    root = _schema_for(values, (), _key_docs(text))
    # Helm hands `global` to every chart (it may be used as a subchart).
    root["properties"]["global"] = {"type": "object", "description": "Helm global values."}
    # What the CRD and the API refuse, the chart refuses too (same patterns, one definition).
    s3 = root["properties"]["operator"]["properties"]["s3"]["properties"]
    s3["endpoint"]["pattern"] = f"^$|{URL_PATTERN}"
    quantities = {
        "type": "object",
        "additionalProperties": {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": QUANTITY_PATTERN},
            ]
        },
    }
    res = root["properties"]["resources"]
    res.pop("additionalProperties", None)
    res.update(
        type="object",
        additionalProperties=False,
        properties={
            "requests": {"description": "What the operator's container asks for.", **quantities},
            "limits": {"description": "The most its container may use.", **quantities},
        },
    )
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "loraf-operator values (GENERATED by hack/chart_gen.py from values.yaml)",
        **root,
    }


# -------------------------------------------------------------------------- RBAC


def _split(resources: tuple[str, ...], scope: str) -> list[str]:
    if scope == "namespaced":
        return [r for r in resources if r.split("/")[0] not in CLUSTER_SCOPED]
    return [
        r
        for r in resources
        if r.split("/")[0] in CLUSTER_SCOPED and r.split("/")[0] not in UNNEEDED_NAMESPACED
    ]


def rbac_sets() -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Rule sets for the chart: (why, rule) pairs."""
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {
        "clusterWide": [],
        "namespaced": [],
        "clusterForNamespaced": [],
    }
    for r in RULES:
        out["clusterWide"].append((r.why, r.to_dict()))
        for key, scope in (("namespaced", "namespaced"), ("clusterForNamespaced", "cluster")):
            res = _split(r.resources, scope)
            if res:
                out[key].append((r.why, {**r.to_dict(), "resources": res}))
    return out


def render_rbac() -> str:
    lines = [
        "# GENERATED by hack/chart_gen.py from operator/loraf_operator/rbac_rules.py",
        "# (the same rule set as config/rbac/operator.yaml): edit that file, not this one.",
        "# clusterWide: the ClusterRole of the default (cluster-wide) mode.",
        "# namespaced: the Role put in each watched namespace in namespaced mode.",
        "# clusterForNamespaced: the small ClusterRole namespaced mode still needs (cluster-",
        "#   scoped reads). Left out there: "
        + "; ".join(f"{k} ({v})" for k, v in UNNEEDED_NAMESPACED.items())
        + ".",
    ]
    for key, rules in rbac_sets().items():
        lines.append(f"{key}:")
        for why, rule in rules:
            lines.append(f"  # {why}")
            body = yaml.safe_dump([rule], sort_keys=False, default_flow_style=None, width=200)
            lines.extend("  " + ln for ln in body.rstrip("\n").splitlines())
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------- peering CRDs


def peering_crds() -> dict[Path, str]:
    out: dict[Path, str] = {}
    for doc in yaml.safe_load_all(PEERING_SRC.read_text()):
        if doc and doc.get("kind") == "CustomResourceDefinition":
            name = doc["metadata"]["name"]
            header = (
                "# GENERATED by hack/chart_gen.py from config/kopf-peering.yaml: kopf peering\n"
                "# (leader election between operator replicas). Edit that file, not this one.\n"
            )
            out[CHART / "crds" / f"{name}.yaml"] = header + yaml.safe_dump(doc, sort_keys=False)
    return out


def generated_files() -> dict[Path, str]:
    files = {
        SCHEMA: json.dumps(values_schema(VALUES.read_text()), indent=2) + "\n",
        RBAC: render_rbac(),
        POLICY: "# GENERATED by hack/chart_gen.py from config/policy/trainer-status.yaml: "
        "edit that file, not this one.\n" + POLICY_SRC.read_text(),
    }
    files.update(peering_crds())
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if a generated file is stale")
    args = p.parse_args(argv)
    stale = []
    for path, text in generated_files().items():
        if path.exists() and path.read_text() == text:
            continue
        if args.check:
            stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    for path in stale:
        print(f"stale: {path.relative_to(ROOT)} (run hack/chart_gen.py)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
