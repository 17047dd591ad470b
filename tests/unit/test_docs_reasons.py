"""The docs explain every condition reason a user can see (api.conditions), with what to do."""

from __future__ import annotations

from pathlib import Path

from loraf_operator.api.conditions import REASONS

ROOT = Path(__file__).resolve().parents[2]


def _missing(doc: str, start: str, serving: bool) -> list[str]:
    text = (ROOT / "docs" / doc).read_text()
    table = text.split(start, 1)[1].split("\n#", 1)[0]
    return sorted(
        r.name for r in REASONS.values() if r.serving == serving and f"`{r.name}`" not in table
    )


def test_every_reason_is_documented() -> None:
    assert len([r for r in REASONS.values() if not r.serving]) > 20
    missing = _missing("operations.md", "### Reasons you can see, and what to do", False)
    assert not missing, f"docs/operations.md does not explain: {missing}"


def test_every_serving_reason_is_documented() -> None:
    assert {"EngineExited", "ServingFull", "AdapterAdded"} <= set(REASONS)
    missing = _missing("serving.md", "## Reasons", True)
    assert not missing, f"docs/serving.md does not explain: {missing}"
