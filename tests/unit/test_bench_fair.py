"""The GPU benchmark's interleaving and ratio summary (bench/gpu/fair.py; pure)."""

from __future__ import annotations

from typing import Any

from bench.gpu import fair


def _run(group: str, cid: str, rnd: int, tps: float, **cfg: Any) -> dict[str, Any]:
    config = {"group": group, "id": cid, "round": rnd, "baseline": cid == "b"} | cfg
    return {"ok": True, "config": config, "tokens_per_s": tps}


def test_rounds_alternate_order_within_each_group() -> None:
    cfgs = [{"group": "g", "id": "b"}, {"group": "g", "id": "a"}, {"group": "h", "id": "b"}]
    order = [(c["group"], c["id"], c["round"]) for c in fair.interleave(cfgs, 3)]
    assert order == [
        ("g", "b", 0), ("g", "a", 0), ("h", "b", 0),
        ("g", "a", 1), ("g", "b", 1), ("h", "b", 1),
        ("g", "b", 2), ("g", "a", 2), ("h", "b", 2),
    ]  # fmt: skip


def test_ratio_is_per_round_median_and_goal_needs_the_whole_spread() -> None:
    runs = [
        _run("g", "b", 0, 100, goal_ratio=1.5),
        _run("g", "a", 0, 160),
        _run("g", "b", 1, 80, goal_ratio=1.5),
        _run("g", "a", 1, 112),  # 1.4: this round misses the goal
        _run("g", "b", 2, 100, goal_ratio=1.5),
        _run("g", "a", 2, 170),
    ]
    g = fair.summary(runs)["groups"]["g:a"]
    assert g["ratio_to_baseline"]["per_round"] == [1.6, 1.4, 1.7]
    assert g["ratio_to_baseline"]["median"] == 1.6
    assert (g["ratio_to_baseline"]["min"], g["ratio_to_baseline"]["max"]) == (1.4, 1.7)
    assert g["goal_met"] is False
    runs[3]["tokens_per_s"] = 121
    assert fair.summary(runs)["groups"]["g:a"]["goal_met"] is True


def test_failed_runs_are_left_out_and_absolute_goals_use_the_slowest_round() -> None:
    runs = [
        _run("l", "a", 0, 16500, goal_tokens_per_s=16000),
        _run("l", "a", 1, 15900, goal_tokens_per_s=16000),
        {"ok": False, "config": {"group": "l", "id": "a", "round": 2}},
    ]
    g = fair.summary(runs)["groups"]["l:a"]
    assert g["tokens_per_s"]["per_round"] == [16500, 15900]
    assert g["goal_met"] is False and "ratio_to_baseline" not in g


def test_budget_and_planner_checks_per_run() -> None:
    r = _run("g", "a", 0, 1.0, budget_gib=24)
    r |= {"peak_reserved_gib": 23.7, "plan": {"estimatedPeakGiB": 22.8}}
    (row,) = fair.summary([r])["runs"]
    assert row["within_budget"] is True
    assert row["planner_at_or_above_measured"] is False
