"""docs/operations.md lists every condition reason a user can see, with what to do."""

from __future__ import annotations

import ast
from pathlib import Path

from loraf_operator.api.exitcodes import ExitCode
from loraf_operator.status import WARNING_REASONS

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("runs.py", "run_tracking.py", "reconciler.py", "status.py")


def reasons_in_source() -> set[str]:
    """Every literal reason passed to Cond(type, status, reason, ...) in the operator."""
    found: set[str] = set()
    for name in SOURCES:
        tree = ast.parse((ROOT / "operator" / "loraf_operator" / name).read_text())
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Cond"):
                continue
            if len(node.args) >= 3 and isinstance(node.args[2], ast.Constant):
                found.add(str(node.args[2].value))
    return found


def test_every_reason_is_documented() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    table = doc.split("### Reasons you can see, and what to do", 1)[1].split("\n### ", 1)[0]
    reasons = reasons_in_source() | set(WARNING_REASONS)
    reasons |= {c.reason for c in ExitCode if c not in (ExitCode.OK,)}
    reasons -= {""}
    assert len(reasons) > 20
    missing = sorted(r for r in reasons if f"`{r}`" not in table)
    assert not missing, f"docs/operations.md does not explain: {missing}"


def serving_reasons_in_source() -> set[str]:
    """Literal reasons of LoRAServing conditions and of the fine-tune's Serving condition."""
    found: set[str] = set()
    where = {"serving_status.py": ("Cond", 2), "serving_link.py": ("Outcome", 1)}
    for name, (func, pos) in where.items():
        tree = ast.parse((ROOT / "operator" / "loraf_operator" / name).read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            callee = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if callee == func and len(node.args) > pos:
                arg = node.args[pos]
                if isinstance(arg, ast.Constant):
                    found.add(str(arg.value))
    return found


def test_every_serving_reason_is_documented() -> None:
    doc = (ROOT / "docs" / "serving.md").read_text()
    table = doc.split("## Reasons", 1)[1].split("\n## ", 1)[0]
    reasons = serving_reasons_in_source()
    assert {"EngineExited", "ServingFull", "AdapterAdded"} <= reasons
    missing = sorted(r for r in reasons if f"`{r}`" not in table)
    assert not missing, f"docs/serving.md does not explain: {missing}"
