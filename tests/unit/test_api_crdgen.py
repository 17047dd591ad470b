"""Unit tests for the CRD generator: structural output, rules in place, files up to date."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loraf_operator.api import crdgen

ROOT = Path(__file__).resolve().parents[2]


def walk(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


CRDS = {"finetune": crdgen.finetune_crd(), "serving": crdgen.serving_crd()}


def schema_of(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("which", list(CRDS))
def test_structural(which: str) -> None:
    schema = schema_of(CRDS[which])
    for path, node in walk(schema):
        if path.endswith(".properties") or any(
            k in path for k in ("x-kubernetes-validations", ".default", ".enum")
        ):
            continue
        for bad in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "const"):
            assert bad not in node, f"{which}: {bad} at {path}"
        assert node.get("additionalProperties") is not False, path
        if "additionalProperties" in node:
            assert "properties" not in node, path
        # Every schema node has a type unless it is int-or-string / free-form.
        if not (
            node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        ):
            assert "type" in node, f"{which}: no type at {path}"
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            if bound in node:
                assert isinstance(node[bound], bool), path
        if "default" in node:
            assert node["default"] is not None, path


def test_finetune_schema_details() -> None:
    spec = schema_of(CRDS["finetune"])["properties"]["spec"]
    lora = spec["properties"]["lora"]
    assert lora["default"] == {}
    r = lora["properties"]["r"]
    assert (
        r["type"] == "integer" and r["default"] == 16 and r["minimum"] == 1 and r["maximum"] == 1024
    )
    assert "LoRA rank" in r["description"]
    assert lora["properties"]["dropout"]["exclusiveMaximum"] is True
    assert lora["properties"]["targetModules"]["minItems"] == 1
    assert spec["properties"]["method"]["enum"] == ["lora", "qlora"]
    assert spec["properties"]["quantization"]["nullable"] is True
    assert spec["properties"]["quantization"]["properties"]["bits"]["enum"] == [4, 8]
    assert sorted(spec["required"]) == ["baseModel", "dataset", "output", "training"]
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert "self.method == 'qlora' || !has(self.quantization)" in rules
    training = spec["properties"]["training"]
    none, both = training["x-kubernetes-validations"]
    assert none["rule"] == "has(self.epochs) || has(self.maxSteps)"
    assert none["reason"] == "FieldValueRequired"
    assert both["rule"] == "(has(self.epochs) ? 1 : 0) + (has(self.maxSteps) ? 1 : 0) <= 1"
    assert (
        both["reason"] == "FieldValueForbidden"
        and "has(self.epochs) ?" in both["messageExpression"]
    )
    res = spec["properties"]["resources"]["properties"]
    assert res["cpu"]["x-kubernetes-int-or-string"] is True
    # core/v1 objects copied into the pod are typed, so the apiserver checks them at apply.
    tol = res["tolerations"]["items"]
    assert "x-kubernetes-preserve-unknown-fields" not in tol
    assert tol["properties"]["operator"]["enum"] == ["Exists", "Equal"]
    effects = ["", "NoSchedule", "PreferNoSchedule", "NoExecute"]
    assert tol["properties"]["effect"]["enum"] == effects
    assert res["nodeSelector"]["additionalProperties"]["maxLength"] == 63
    assert "pattern" in res["nodeSelector"]["additionalProperties"]
    assert "k.matches(" in res["nodeSelector"]["x-kubernetes-validations"][0]["rule"]
    affinity = res["affinity"]["properties"]["nodeAffinity"]["properties"]
    required = affinity["requiredDuringSchedulingIgnoredDuringExecution"]
    term = required["properties"]["nodeSelectorTerms"]["items"]
    op = term["properties"]["matchExpressions"]["items"]["properties"]["operator"]
    assert op["enum"] == ["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    for name in ("priorityClassName", "modelCachePvc", "gpuType"):
        assert "pattern" in res[name], name
    assert "pattern" in res["imagePullSecrets"]["items"]
    # A multi-node run without GPUs is refused at apply time; more GPUs per pod are not.
    rules = spec["properties"]["resources"]["x-kubernetes-validations"]
    assert not any("self.gpus <= 1" in r["rule"] for r in rules)
    assert any(r.get("fieldPath") == ".nodes" and "needs gpus" in r["message"] for r in rules)
    assert res["strategy"]["enum"] == ["auto", "ddp", "fsdp"]
    assert (res["nodes"]["minimum"], res["nodes"]["maximum"]) == (1, 64)
    status = schema_of(CRDS["finetune"])["properties"]["status"]["properties"]
    assert status["conditions"]["x-kubernetes-list-type"] == "map"
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    assert "peakGpuMemoryGiB" in status["progress"]["properties"]


def test_cel_rules_are_bounded() -> None:
    """CEL cost estimation needs bounds on every list/string a rule could iterate."""
    for crd in CRDS.values():
        for path, node in walk(schema_of(crd)):
            if node.get("type") == "array" and "x-kubernetes-validations" not in path:
                if ".status." in path or path.startswith(".properties.status"):
                    continue
                assert "maxItems" in node, f"unbounded list at {path}"


def test_rules_name_the_value_not_the_type() -> None:
    """A failed rule prints `Invalid value: "<node type>"` unless it has a reason such as
    FieldValueForbidden/Required; rules that do say "Invalid" carry a messageExpression or
    a fieldPath to a scalar, so the user sees which value is wrong."""
    for which, crd in CRDS.items():
        for path, node in walk(schema_of(crd)):
            for rule in node.get("x-kubernetes-validations", []):
                if "reason" in rule or "messageExpression" in rule:
                    continue
                raise AssertionError(f"{which}: rule at {path} names no value: {rule['message']}")


def test_no_message_expression_converts_with_string() -> None:
    """kube-apiserver 1.34 estimates `string(<int>)` as unbounded and refuses the whole CRD
    ("estimated messageExpression cost exceeds budget by factor of more than 100x")."""
    for which, crd in CRDS.items():
        for path, node in walk(schema_of(crd)):
            for rule in node.get("x-kubernetes-validations", []):
                expr = rule.get("messageExpression", "")
                assert "string(" not in expr, f"{which}: {path}: {expr}"


def test_object_rules_at_the_root() -> None:
    svc = schema_of(CRDS["serving"])["x-kubernetes-validations"]
    assert "self.metadata.name.matches(" in svc[0]["rule"]
    assert svc[0]["messageExpression"].endswith("+ self.metadata.name")
    ft = schema_of(CRDS["finetune"])["x-kubernetes-validations"]
    assert "has(self.spec.serving.servingRef)" in ft[0]["rule"]


def test_names_and_columns() -> None:
    ft = CRDS["finetune"]["spec"]
    assert ft["names"]["shortNames"] == ["loraf"] and "ml" in ft["names"]["categories"]
    version = ft["versions"][0]
    assert version["subresources"] == {"status": {}}
    cols = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(cols) == [
        "Phase",
        "Model",
        "Method",
        "Progress",
        "Loss",
        "ETA",
        "Age",
        "GPUs",
        "Artifact",
    ]
    assert cols["GPUs"]["priority"] == 1 and cols["Artifact"]["priority"] == 1
    svc = CRDS["serving"]["spec"]
    assert svc["names"]["shortNames"] == ["lorasvc"]
    adapters = schema_of(CRDS["serving"])["properties"]["spec"]["properties"]["adapters"]
    assert adapters["x-kubernetes-list-map-keys"] == ["name"]


def test_generated_files_are_current() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "loraf_operator.api.crdgen", "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    crd_dir = ROOT / "crds"
    chart_dir = ROOT / "charts" / "loraf-operator" / "crds"
    for f in crd_dir.glob("*.yaml"):
        assert (chart_dir / f.name).read_text() == f.read_text()


def test_check_detects_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = crdgen.generated_files()
    target = next(iter(files))
    monkeypatch.setattr(crdgen, "generated_files", lambda: {tmp_path / target.name: "x"})
    assert crdgen.main(["--check"]) == 1
    assert crdgen.main([]) == 0  # writes it
    assert crdgen.main(["--check"]) == 0


def test_kubectl_explain_shows_defaults_bounds_and_int_or_string() -> None:
    """`kubectl explain` prints only descriptions: defaults and bounds go into them (CRD only;
    docs/api.md has its own columns)."""
    from loraf_operator.api.crdgen import finetune_crd

    spec = finetune_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    props = spec["properties"]
    rank = props["lora"]["properties"]["r"]
    assert f"Default: {rank['default']}." in rank["description"]
    assert "Bounds: minimum" in rank["description"]
    memory = props["resources"]["properties"]["memory"]
    assert "integer or string" in memory["description"]
    assert "Default:" not in spec.get("description", "")  # objects get no suffix
