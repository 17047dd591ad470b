"""The fact-recall benchmark's dataset builder (bench/quality/make_dataset.py)."""

from __future__ import annotations

from pathlib import Path

from bench.quality import make_dataset


def test_committed_data_is_what_the_builder_writes(tmp_path: Path) -> None:
    paths = make_dataset.write(tmp_path)
    for name, path in paths.items():
        assert path.read_text() == (make_dataset.OUT / path.name).read_text(), name


def test_varied_answers_change_only_the_training_answers() -> None:
    one, varied = make_dataset.build(), make_dataset.build(varied_answers=True)
    assert varied["heldout"] == one["heldout"] and varied["prompts"] == one["prompts"]
    assert [r["instruction"] for r in varied["train"]] == [r["instruction"] for r in one["train"]]
    by_fact = {f.name: (f.key, *f.alt) for f in make_dataset.FACTS}
    answers: dict[str, set[str]] = {}
    for i, row in enumerate(varied["train"]):
        fact = make_dataset.FACTS[i // 7]
        answers.setdefault(fact.name, set()).add(row["output"])
        assert make_dataset.recalled(row["output"], by_fact[fact.name])
    assert all(len(a) == 3 for a in answers.values())
    assert set(make_dataset.RESTATED) == set(by_fact)

