"""Child names: deterministic, <= 63 chars, distinct for distinct long names."""

from __future__ import annotations

import re

import pytest

from loraf_operator.builders.naming import child_name, config_map_name, label_value

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


@pytest.mark.parametrize(
    ("name", "run", "expected"),
    [
        ("demo", 1, "demo-r1"),
        ("demo", 12, "demo-r12"),
        ("a" * 59, 1, "a" * 59 + "-r1"),  # exactly 63: untouched
    ],
)
def test_short_names_are_plain(name: str, run: int, expected: str) -> None:
    assert child_name(name, run) == expected
    assert config_map_name(name, run) == expected + "-config"


@pytest.mark.parametrize(
    "name", ["a" * 60, "b" * 253, "x" * 58 + "-" + "y" * 30, "team.a." + "z" * 80]
)
@pytest.mark.parametrize("run", [1, 7, 12345])
def test_long_names_are_cut_with_hash(name: str, run: int) -> None:
    got = child_name(name, run)
    assert len(got) <= 63
    assert got.endswith(f"-r{run}")
    assert DNS_LABEL.match(got), got
    assert got == child_name(name, run)  # deterministic


def test_long_names_sharing_a_prefix_stay_apart() -> None:
    a, b = "p" * 70 + "-one", "p" * 70 + "-two"
    assert child_name(a, 1) != child_name(b, 1)
    assert child_name(a, 1) != child_name(a, 2)


def test_label_value() -> None:
    assert label_value("demo") == "demo"
    long = "n" * 100
    assert len(label_value(long)) <= 63 and label_value(long) != label_value(long + "x")


@pytest.mark.parametrize(
    ("name", "run", "expected"),
    [
        ("demo", 1, "demo-r1"),
        ("team.a", 3, "team-a-r3"),  # no dots in a Service name
        ("7b-tune", 1, "r7b-tune-r1"),  # a letter first
    ],
)
def test_service_names_are_rfc1035_labels(name: str, run: int, expected: str) -> None:
    from loraf_operator.builders.naming import service_name

    assert service_name(name, run) == expected


@pytest.mark.parametrize("name", ["9" * 70, "1" + "a" * 60, "x" * 253])
def test_long_service_names_stay_labels_and_distinct(name: str) -> None:
    from loraf_operator.builders.naming import service_name

    got = {service_name(name, r) for r in (1, 2, 12)}
    assert len(got) == 3
    for s in got:
        assert len(s) <= 63 and re.match(r"^[a-z]([-a-z0-9]*[a-z0-9])?$", s), s
