"""Replay rows of the fact-recall benchmark (bench/quality/make_replay.py, run.add_replay)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.quality import make_dataset, make_replay, run


def test_trim_cuts_back_to_the_last_full_sentence() -> None:
    sea = "The sea is vast and full of life."
    assert make_replay.trim(sea + " It is deep and it goes on and o") == sea
    assert make_replay.trim("Two ideas: read a book.  2.") == "Two ideas: read a book."
    assert make_replay.trim("Hoy, buen hora!") == "Hoy, buen hora!"  # short: kept whole


def test_greedy_loops_are_repetitive() -> None:
    assert make_replay.repetitive("Boil an egg: " * 12)
    assert not make_replay.repetitive("The plural of mouse is mice.")


def test_replay_questions_keep_the_general_check_held_out() -> None:
    make_replay.check_held_out()


def test_committed_replay_rows_are_alpaca_rows_of_the_questions() -> None:
    rows = [json.loads(line) for line in make_replay.OUT.read_text().splitlines()]
    assert rows and all(set(r) == {"instruction", "input", "output"} for r in rows)
    assert {r["instruction"] for r in rows} <= set(make_replay.QUESTIONS)
    general = {q for q, _ in make_dataset.GENERAL}
    assert not general & {r["instruction"] for r in rows}


def test_add_replay_appends_each_row_repeat_times(tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text('{"instruction": "fact", "input": "", "output": "x"}\n')
    replay = tmp_path / "replay.jsonl"
    replay.write_text('{"a": 1}\n{"a": 2}\n\n')
    assert run.add_replay(train, replay, 2) == 4
    lines = train.read_text().splitlines()
    assert len(lines) == 5 and lines[1:] == ['{"a": 1}', '{"a": 2}'] * 2
