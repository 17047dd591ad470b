"""Interleaved rounds and honest ratios (issue 17): pure, no torch.

A suite's configurations run round after round, A B then B A, so drift of the machine
over a call lands on both sides. Each round's ratio is the project run's tokens/s over
the baseline's of the same group and round; the summary is the median of those ratios
with its spread, and a goal counts as met only when the whole spread clears it.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any


def interleave(configs: list[dict[str, Any]], rounds: int) -> list[dict[str, Any]]:
    """Every group's configurations once per round, in reverse order on odd rounds."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in configs:
        groups[c["group"]].append(c)
    out = []
    for r in range(rounds):
        for members in groups.values():
            for c in members if r % 2 == 0 else reversed(members):
                out.append(c | {"round": r})
    return out


def _spread(values: list[float]) -> dict[str, Any]:
    return {
        "per_round": [round(v, 3) for v in values],
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per group and configuration: the median ratio to the baseline with its spread, the
    goal and whether the whole spread meets it; per run: whether it stayed in its budget
    and whether the planner's estimate was at or above the measured peak."""
    ok = [r for r in results if r.get("ok")]
    base = {
        (r["config"]["group"], r["config"]["round"]): r for r in ok if r["config"].get("baseline")
    }
    goals = {g: r["config"].get("goal_ratio") for (g, _), r in base.items()}
    ratios: dict[tuple[str, str], list[float]] = defaultdict(list)
    speeds: dict[tuple[str, str], list[float]] = defaultdict(list)
    checks: list[dict[str, Any]] = []
    for r in ok:
        c = r["config"]
        key = (c["group"], c["id"])
        speeds[key].append(r["tokens_per_s"])
        b = base.get((c["group"], c["round"]))
        if b is not None and r is not b:
            ratios[key].append(r["tokens_per_s"] / b["tokens_per_s"])
        checks.append(_checks(r))
    out: dict[str, Any] = {"runs": checks, "groups": {}}
    for key, tps in speeds.items():
        group, cid = key
        entry: dict[str, Any] = {"tokens_per_s": _spread(tps)}
        cfg = next(r["config"] for r in ok if (r["config"]["group"], r["config"]["id"]) == key)
        if key in ratios:
            entry["ratio_to_baseline"] = _spread(ratios[key])
            goal = goals.get(group)
            if goal:
                entry["goal_ratio"] = goal
                entry["goal_met"] = min(ratios[key]) >= goal
        if cfg.get("goal_tokens_per_s"):
            entry["goal_tokens_per_s"] = cfg["goal_tokens_per_s"]
            entry["goal_met"] = min(tps) >= cfg["goal_tokens_per_s"]
        out["groups"][f"{group}:{cid}"] = entry
    return out


def _checks(r: dict[str, Any]) -> dict[str, Any]:
    c = r["config"]
    peak = r.get("peak_reserved_gib")
    row: dict[str, Any] = {"group": c["group"], "id": c["id"], "round": c["round"]}
    budget = c.get("budget_gib")
    if budget is not None and peak is not None:
        row["within_budget"] = peak <= budget
    est = (r.get("plan") or {}).get("estimatedPeakGiB")
    if est is not None and peak is not None:
        row["planner_est_reserved_gib"] = est
        row["planner_at_or_above_measured"] = est >= peak
    return row
