"""Conditions helpers and THE phase function."""

from __future__ import annotations

from typing import cast

import pytest

from loraf_operator.status import (
    Cond,
    Status,
    apply,
    derive_phase,
    is_warning,
    summary,
    transitions,
)


def conds(*items: tuple[str, str, str]) -> list[dict[str, object]]:
    updates = [Cond(t, cast(Status, s), r, f"{t} says {r}") for t, s, r in items]
    return apply([], updates, 1, "2026-01-01T00:00:00Z")


def test_last_transition_time_moves_only_on_status_change() -> None:
    c1 = apply([], [Cond("Running", "False", "NotStarted")], 1, "T1")
    c2 = apply(c1, [Cond("Running", "False", "ErrImagePull", "boom")], 2, "T2")
    assert c2[0]["lastTransitionTime"] == "T1"  # reason changed, status did not
    assert c2[0]["reason"] == "ErrImagePull" and c2[0]["observedGeneration"] == 2
    c3 = apply(c2, [Cond("Running", "True", "PodRunning")], 2, "T3")
    assert c3[0]["lastTransitionTime"] == "T3"
    assert c1[0]["reason"] == "NotStarted"  # inputs untouched


def test_conditions_are_keyed_by_type_and_ordered() -> None:
    c = apply(
        [],
        [
            Cond("Failed", "False", "X"),
            Cond("Validated", "True", "SpecValid"),
            Cond("Custom", "True", "Y"),
            Cond("Running", "True", "PodRunning"),
        ],
        1,
        "T",
    )
    assert [x["type"] for x in c] == ["Validated", "Running", "Failed", "Custom"]
    c = apply(c, [Cond("Running", "False", "Completed")], 1, "T")
    assert [x["type"] for x in c].count("Running") == 1


@pytest.mark.parametrize(
    ("items", "phase"),
    [
        ((), "Pending"),
        ((("Validated", "True", "SpecValid"),), "Pending"),
        ((("Scheduled", "Unknown", "Pending"),), "Scheduling"),
        ((("Scheduled", "False", "Unschedulable"), ("Running", "False", "Pending")), "Scheduling"),
        (
            (("Scheduled", "True", "PodScheduled"), ("Running", "False", "ErrImagePull")),
            "Scheduling",
        ),
        ((("Scheduled", "True", "PodScheduled"), ("Running", "True", "PodRunning")), "Running"),
        ((("Suspended", "True", "Queued"), ("Running", "False", "Queued")), "Queued"),
        ((("Suspended", "True", "Suspended"), ("Running", "False", "Suspended")), "Suspended"),
        ((("Running", "False", "Completed"), ("Succeeded", "True", "Completed")), "Succeeded"),
        ((("Succeeded", "True", "Completed"), ("Failed", "True", "X")), "Failed"),  # Failed wins
        ((("Validated", "False", "InvalidSpec"), ("Failed", "True", "InvalidSpec")), "Failed"),
    ],
)
def test_derive_phase(items: tuple[tuple[str, str, str], ...], phase: str) -> None:
    assert derive_phase(conds(*items)) == phase


def test_summary_message_names_the_reason() -> None:
    c = conds(("Scheduled", "True", "PodScheduled"), ("Running", "False", "ErrImagePull"))
    assert summary(c) == ("Scheduling", "ErrImagePull: Running says ErrImagePull")
    c = conds(("Scheduled", "False", "Unschedulable"), ("Running", "False", "Pending"))
    assert summary(c) == ("Scheduling", "Unschedulable: Scheduled says Unschedulable")
    c = conds(("Failed", "True", "DatasetInvalid"))
    assert summary(c) == ("Failed", "DatasetInvalid: Failed says DatasetInvalid")


def test_transitions_and_warnings() -> None:
    old = conds(("Running", "False", "NotStarted"), ("Failed", "False", "RunStarted"))
    new = apply(old, [Cond("Running", "True", "PodRunning")], 1, "T")
    assert [c["type"] for c in transitions(old, new)] == ["Running"]
    assert transitions(new, new) == []
    failed = apply(new, [Cond("Failed", "True", "OOMKilled")], 1, "T")
    (t,) = transitions(new, failed)
    assert is_warning(t)
    assert not is_warning(conds(("Running", "True", "PodRunning"))[0])
    assert is_warning(conds(("Scheduled", "False", "Unschedulable"))[0])
