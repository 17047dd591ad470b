"""api.conditions is the one home of condition types and reasons: every reason the
operator's code writes is declared there, and the CRD lists every type."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from loraf_operator.api import conditions, crdgen
from loraf_operator.api.exitcodes import ExitCode

OPERATOR = Path(__file__).resolve().parents[2] / "operator" / "loraf_operator"
# Parameters (and keywords) that carry a condition or event reason.
REASON_PARAM = re.compile(r"^(reason_?|why|cause|\w+_reason)$")
# Its `why` is the prose reason of an RBAC rule, not a condition's.
NOT_CONDITIONS = {"rbac_rules.py"}


def _sources() -> dict[str, ast.Module]:
    paths = sorted(p for p in OPERATOR.glob("*.py") if p.name not in NOT_CONDITIONS)
    return {p.name: ast.parse(p.read_text()) for p in paths}


def _is_dataclass(node: ast.ClassDef) -> bool:
    return any("dataclass" in ast.unparse(d) for d in node.decorator_list)


def reason_positions(trees: list[ast.Module]) -> dict[str, set[int]]:
    """Callable name -> positions of its reason parameters, for every function, dataclass
    and exception the operator defines (so a new writer is covered without a list here)."""
    out: dict[str, set[int]] = {}

    def params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
        names = [a.arg for a in fn.args.posonlyargs + fn.args.args]
        return [n for n in names if n not in ("self", "cls")]

    for tree in trees:
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names = params(node)
            elif isinstance(node, ast.ClassDef) and _is_dataclass(node):
                names = [
                    n.target.id
                    for n in node.body
                    if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
                ]
            elif isinstance(node, ast.ClassDef):
                init = [n for n in node.body if isinstance(n, ast.FunctionDef)]
                names = next((params(f) for f in init if f.name == "__init__"), [])
            hits = {i for i, n in enumerate(names) if REASON_PARAM.match(n)}
            if hits and not isinstance(node, ast.Module):
                out.setdefault(getattr(node, "name", ""), set()).update(hits)
    return out


def literal_reasons(trees: dict[str, ast.Module]) -> dict[str, str]:
    """Every string literal passed as a reason: reason -> where (file:line)."""
    positions = reason_positions(list(trees.values()))
    found: dict[str, str] = {}
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            callee = str(getattr(node.func, "id", None) or getattr(node.func, "attr", ""))
            args = [a for i, a in enumerate(node.args) if i in positions.get(callee, ())]
            args += [k.value for k in node.keywords if k.arg and REASON_PARAM.match(k.arg)]
            for a in args:
                if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value:
                    found.setdefault(a.value, f"{name}:{a.lineno}")
    return found


def test_the_scan_finds_a_bare_reason() -> None:
    src = """
from dataclasses import dataclass
@dataclass(frozen=True)
class Cond:
    type: str
    status: str
    reason: str
class Waiting(Exception):
    def __init__(self, reason: str, message: str) -> None: ...
def f(x, unfinished_reason="Old"): ...
Cond("Running", "False", "NotDeclaredYet")
Waiting("AlsoNew", "m")
f(1, "Third")
event(type="Normal", reason="Fourth")
"""
    found = literal_reasons({"x.py": ast.parse(src)})
    assert set(found) == {"NotDeclaredYet", "AlsoNew", "Third", "Fourth"}


def test_every_reason_written_is_declared() -> None:
    sources = _sources()
    assert {"serving_link.py", "reconciler.py", "runs.py"} <= {Path(n).name for n in sources}
    found = literal_reasons(sources)
    undeclared = {r: where for r, where in found.items() if r not in conditions.REASONS}
    assert not undeclared, f"declare these in api/conditions.py: {undeclared}"


def test_exit_code_reasons_are_declared() -> None:
    assert {c.reason for c in ExitCode} <= set(conditions.REASONS)


def test_warning_reasons_come_from_the_declarations() -> None:
    assert "OOMKilled" in conditions.WARNING_REASONS
    assert "PodRunning" not in conditions.WARNING_REASONS
    assert {r.name for r in conditions.REASONS.values() if r.warns} == conditions.WARNING_REASONS


def test_the_crd_lists_every_condition_type() -> None:
    for crd, kind in (
        (crdgen.finetune_crd(), "LoRAFineTune"),
        (crdgen.serving_crd(), "LoRAServing"),
    ):
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        text = schema["properties"]["status"]["properties"]["conditions"]["description"]
        types = [t.name for t in conditions.TYPES.values() if t.kind == kind]
        assert types and all(f"{t}:" in text for t in types), (kind, text)
    assert len([t for t in conditions.TYPES.values() if t.kind == "LoRAFineTune"]) == 7
