"""Dataset validation, formats, the eval split: pure, no torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraf_trainer import data
from loraf_trainer.errors import DatasetInvalid


def alpaca(i: int, **over: str) -> dict[str, str]:
    return {"instruction": f"question {i}", "input": "", "output": f"answer {i}", **over}


def test_alpaca_row_becomes_chat_prompt_and_plain_template() -> None:
    ex = data.validate_row(alpaca(1, input="ctx"), 1, "alpaca", {})
    assert ex.messages == (("user", "question 1\n\nctx"),)
    assert ex.target == "answer 1"
    assert "### Input:\nctx" in ex.plain_prompt
    assert data.to_record(ex, chat_template=True, completion_only=True) == {
        "prompt": [{"role": "user", "content": "question 1\n\nctx"}],
        "completion": [{"role": "assistant", "content": "answer 1"}],
    }
    rec = data.to_record(ex, chat_template=False, completion_only=False)
    assert rec["text"].endswith("### Response:\nanswer 1")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"instruction": "q", "output": ""}, "row 17: field 'output' is missing/empty"),
        ({"instruction": "q"}, "row 17: field 'output' is missing/empty"),
        ({"output": "a"}, "row 17: field 'instruction' is missing/empty"),
        ({"instruction": 3, "output": "a"}, "row 17: field 'instruction' must be a string"),
        (["not", "an", "object"], "row 17: expected an object"),
    ],
)
def test_bad_alpaca_row_names_row_and_field(row: object, message: str) -> None:
    rows = [alpaca(i) for i in range(16)] + [row]
    with pytest.raises(DatasetInvalid) as e:
        data.validate_rows(rows, "alpaca", {})
    assert e.value.message.startswith(message)


def test_column_mapping_is_used_in_messages() -> None:
    rows = [{"q": "x", "a": ""}]
    with pytest.raises(DatasetInvalid, match="row 1: field 'a' is missing/empty"):
        data.validate_rows(rows, "alpaca", {"instruction": "q", "output": "a"})


def test_chat_rows() -> None:
    good = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
        ]
    }
    ex = data.validate_row(good, 1, "chat", {})
    assert ex.messages == (("system", "be brief"), ("user", "hi"))
    assert ex.target == "hello"
    full = data.to_record(ex, chat_template=True, completion_only=False)
    assert [m["role"] for m in full["messages"]] == ["system", "user", "assistant"]
    # JSON-encoded lists (csv/parquet) are accepted.
    assert data.validate_row({"messages": json.dumps(good["messages"])}, 1, "chat", {}) == ex
    bad_role = {"messages": [{"role": "bot", "content": "x"}]}
    with pytest.raises(DatasetInvalid, match=r"row 4: field 'messages\[0\]'.role"):
        data.validate_row(bad_role, 4, "chat", {})
    no_answer = {"messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(DatasetInvalid, match="must end with an assistant message"):
        data.validate_row(no_answer, 2, "chat", {})


def test_prompt_completion_and_text() -> None:
    ex = data.validate_row({"prompt": "2+2=", "completion": "4"}, 1, "prompt-completion", {})
    assert data.to_record(ex, True, True) == {"prompt": "2+2=", "completion": "4"}
    assert data.to_record(ex, True, False) == {"text": "2+2=4"}
    t = data.validate_row({"body": "hello world"}, 1, "text", {"text": "body"})
    assert data.to_record(t, True, True) == {"text": "hello world"}


def test_eval_split_is_deterministic_and_order_independent() -> None:
    exs = data.validate_rows([alpaca(i) for i in range(100)], "alpaca", {})
    train, evals = data.eval_split(exs, 0.1, seed=42)
    assert len(evals) == 10 and len(train) == 90
    _, evals2 = data.eval_split(list(reversed(exs)), 0.1, seed=42)
    assert {e.row for e in evals} == {e.row for e in evals2}
    assert not {e.row for e in evals} & {e.row for e in train}
    _, other_seed = data.eval_split(exs, 0.1, seed=7)
    assert {e.row for e in other_seed} != {e.row for e in evals}
    # Tiny datasets keep a row on each side; fraction 0 keeps everything for training.
    assert [len(x) for x in data.eval_split(exs[:2], 0.1)] == [1, 1]
    assert data.eval_split(exs, 0.0) == (exs, [])


def test_prepare_subsamples_after_validating_everything() -> None:
    rows = [alpaca(i) for i in range(50)] + [alpaca(50, output="")]
    with pytest.raises(DatasetInvalid, match="row 51"):
        data.prepare(rows, "alpaca", {}, 0.1, max_rows=5)
    p = data.prepare(rows[:50], "alpaca", {}, 0.2, max_rows=10, seed=1)
    assert len(p.train) + len(p.eval) == 10 and len(p.eval) == 2
    assert p.rows == 50 and len(p.sha256) == 64
    assert p.sha256 == data.prepare(rows[:50], "alpaca", {}, 0.2, max_rows=10, seed=1).sha256


def test_read_rows_formats(tmp_path: Path) -> None:
    rows = [alpaca(i) for i in range(3)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "d.json").write_text(json.dumps({"data": rows}))
    (tmp_path / "d.csv").write_text("instruction,input,output\nquestion 0,,answer 0\n")
    assert data.read_rows(tmp_path / "d.jsonl", "jsonl") == rows
    assert data.read_rows(tmp_path / "d.json", "json") == rows
    assert data.read_rows(tmp_path / "d.csv", "csv") == [alpaca(0)]
    assert data.infer_file_format("x/train.JSONL") == "jsonl"
    assert data.infer_file_format("x/blob", "parquet") == "parquet"
    with pytest.raises(DatasetInvalid, match="cannot tell the file format"):
        data.infer_file_format("x/blob", "auto")
    (tmp_path / "bad.jsonl").write_text(json.dumps(rows[0]) + "\n{oops\n")
    with pytest.raises(DatasetInvalid, match="row 2: not valid JSON"):
        data.read_rows(tmp_path / "bad.jsonl", "jsonl")


def test_read_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow", reason="parquet support comes with pyarrow")
    import pyarrow.parquet as pq

    rows = [alpaca(i) for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    assert data.read_rows(tmp_path / "d.parquet", "parquet") == rows
