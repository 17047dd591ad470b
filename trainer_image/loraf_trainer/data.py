"""Dataset loading, row validation, formatting for TRL and the deterministic eval split.

Everything here runs before the model is loaded (and before a GPU is touched): a bad row
fails the run with `DatasetInvalid` naming the 1-based row and the field, not a stack
trace twenty minutes into a GPU job. Pure functions on plain rows, so unit tests need
neither torch nor `datasets`.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import DatasetInvalid

Format = Literal["alpaca", "chat", "prompt-completion", "text", "preference"]
FileFormat = Literal["jsonl", "json", "parquet", "csv"]

ROLES = ("system", "user", "assistant")
DEFAULT_COLUMNS: dict[str, str] = {
    "instruction": "instruction",
    "input": "input",
    "output": "output",
    "messages": "messages",
    "prompt": "prompt",
    "completion": "completion",
    "text": "text",
    "chosen": "chosen",
    "rejected": "rejected",
}
_SUFFIXES: dict[str, FileFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
}

# Used for models without a chat template (base models): the classic Alpaca layout.
ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_PROMPT_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


@dataclass(frozen=True)
class Example:
    """One validated row in a format-neutral shape.

    `messages` is the conversation up to (not including) the target; `target` is what the
    model learns to produce. `text`-format rows have only `text`."""

    row: int
    messages: tuple[tuple[str, str], ...] = ()
    target: str = ""
    text: str = ""
    # For alpaca on models without a chat template.
    plain_prompt: str = ""
    # preference rows: `target` is the chosen answer, this the rejected one
    rejected: str = ""


@dataclass(frozen=True)
class Prepared:
    train: list[Example]
    eval: list[Example]
    sha256: str  # of the validated rows, canonical JSON: recorded in the manifest
    rows: int
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- reading files


def infer_file_format(path: str, explicit: str | None = None) -> FileFormat:
    if explicit and explicit != "auto":
        if explicit not in ("jsonl", "json", "parquet", "csv"):
            raise DatasetInvalid(f"unsupported fileFormat {explicit!r}")
        return explicit  # type: ignore[return-value]
    for suffix, fmt in _SUFFIXES.items():
        if path.lower().endswith(suffix):
            return fmt
    raise DatasetInvalid(
        f"cannot tell the file format of {path!r}: name it .jsonl/.json/.parquet/.csv "
        "or set dataset.fileFormat"
    )


def read_rows(path: Path, file_format: FileFormat, max_rows: int | None = None) -> list[Any]:
    """Rows as parsed objects (dicts for valid rows; anything else is caught later)."""
    if not path.exists():
        raise DatasetInvalid(f"dataset file {path} does not exist")
    rows: list[Any]
    if file_format == "jsonl":
        rows = []
        with path.open(encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                if max_rows is not None and len(rows) >= max_rows:
                    break
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DatasetInvalid(f"row {len(rows) + 1}: not valid JSON ({e.msg})") from e
        return rows
    if file_format == "json":
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DatasetInvalid(f"{path.name}: not valid JSON ({e})") from e
        if isinstance(doc, dict) and isinstance(doc.get("data"), list):
            doc = doc["data"]
        if not isinstance(doc, list):
            raise DatasetInvalid(f"{path.name}: expected a JSON list of rows")
        rows = doc
    elif file_format == "csv":
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    return rows[:max_rows] if max_rows is not None else rows


# ---------------------------------------------------------------- validation


def _text(row: Mapping[str, Any], n: int, col: str, required: bool = True) -> str:
    v = row.get(col)
    if v is None or (isinstance(v, str) and not v.strip()):
        if required:
            raise DatasetInvalid(f"row {n}: field {col!r} is missing/empty")
        return ""
    if not isinstance(v, str):
        raise DatasetInvalid(f"row {n}: field {col!r} must be a string, got {type(v).__name__}")
    return v


def _answer(row: Mapping[str, Any], n: int, col: str) -> str:
    """A preference answer: a string, or chat messages whose last (assistant) turn is it."""
    if isinstance(row.get(col), list):
        return _messages(row, n, col, need_user=False)[-1][1]
    return _text(row, n, col)


def _messages(
    row: Mapping[str, Any], n: int, col: str, last: str = "assistant", need_user: bool = True
) -> list[tuple[str, str]]:
    v = row.get(col)
    if isinstance(v, str):  # csv/parquet often carry the list as a JSON string
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            raise DatasetInvalid(f"row {n}: field {col!r} is not a list of messages") from None
    if not isinstance(v, list) or not v:
        raise DatasetInvalid(f"row {n}: field {col!r} is missing/empty")
    out: list[tuple[str, str]] = []
    for i, m in enumerate(v):
        where = f"row {n}: field '{col}[{i}]'"
        if not isinstance(m, Mapping):
            raise DatasetInvalid(f"{where} must be an object with 'role' and 'content'")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise DatasetInvalid(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str) or not content.strip():
            raise DatasetInvalid(f"{where}.content is missing/empty")
        out.append((role, content))
    if out[-1][0] != last:
        article = "an" if last == "assistant" else "a"
        raise DatasetInvalid(f"row {n}: field {col!r} must end with {article} {last} message")
    if need_user and not any(r == "user" for r, _ in out):
        raise DatasetInvalid(f"row {n}: field {col!r} has no user message")
    return out


def validate_row(raw: Any, n: int, fmt: Format, columns: Mapping[str, str]) -> Example:
    """Validate one row (1-based `n`) and turn it into an Example."""
    if not isinstance(raw, Mapping):
        raise DatasetInvalid(f"row {n}: expected an object, got {type(raw).__name__}")
    c = {**DEFAULT_COLUMNS, **{k: v for k, v in columns.items() if v}}
    if fmt == "alpaca":
        instruction = _text(raw, n, c["instruction"])
        inp = _text(raw, n, c["input"], required=False)
        output = _text(raw, n, c["output"])
        user = f"{instruction}\n\n{inp}" if inp else instruction
        plain = (
            ALPACA_PROMPT_INPUT.format(instruction=instruction, input=inp)
            if inp
            else ALPACA_PROMPT.format(instruction=instruction)
        )
        return Example(row=n, messages=(("user", user),), target=output, plain_prompt=plain)
    if fmt == "chat":
        msgs = _messages(raw, n, c["messages"])
        return Example(row=n, messages=tuple(msgs[:-1]), target=msgs[-1][1])
    if fmt == "prompt-completion":
        prompt = _text(raw, n, c["prompt"])
        completion = _text(raw, n, c["completion"])
        return Example(row=n, target=completion, plain_prompt=prompt)
    if fmt == "text":
        return Example(row=n, text=_text(raw, n, c["text"]))
    if fmt == "preference":
        prompt_col = c["prompt"]
        if isinstance(raw.get(prompt_col), str):
            messages: tuple[tuple[str, str], ...] = (("user", _text(raw, n, prompt_col)),)
        else:
            messages = tuple(_messages(raw, n, prompt_col, last="user"))
        return Example(
            row=n,
            messages=messages,
            target=_answer(raw, n, c["chosen"]),
            rejected=_answer(raw, n, c["rejected"]),
        )
    raise DatasetInvalid(f"unknown dataset format {fmt!r}")


def validate_rows(rows: Sequence[Any], fmt: Format, columns: Mapping[str, str]) -> list[Example]:
    if not rows:
        raise DatasetInvalid("the dataset has no rows")
    return [validate_row(r, i + 1, fmt, columns) for i, r in enumerate(rows)]


def subsample(examples: Sequence[Example], max_rows: int | None, seed: int) -> list[Example]:
    """At most max_rows rows, drawn with the seed (kept in file order)."""
    if max_rows is None or len(examples) <= max_rows:
        return list(examples)
    import random

    keep = set(random.Random(seed).sample(range(len(examples)), max_rows))
    return [ex for i, ex in enumerate(examples) if i in keep]


# ---------------------------------------------------------------- split + hash


def _canonical(ex: Example) -> bytes:
    fields: list[Any] = [ex.messages, ex.target, ex.text, ex.plain_prompt]
    if ex.rejected:  # only preference rows: the other formats keep their hashes
        fields.append(ex.rejected)
    return json.dumps(fields, ensure_ascii=False, sort_keys=True).encode()


def rows_sha256(examples: Sequence[Example]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(_canonical(ex))
        h.update(b"\n")
    return h.hexdigest()


def eval_split(
    examples: Sequence[Example], fraction: float, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Split by a hash of each row's content: the same row lands on the same side no
    matter the order or the number of rows, so reruns and resumes see identical splits.
    At least one row stays on each side when there are two or more."""
    if fraction <= 0 or len(examples) < 2:
        return list(examples), []
    scored = sorted(
        examples,
        key=lambda ex: hashlib.sha256(f"{seed}:".encode() + _canonical(ex)).digest(),
    )
    n_eval = min(max(1, round(len(examples) * fraction)), len(examples) - 1)
    eval_rows = {id(ex) for ex in scored[:n_eval]}
    train = [ex for ex in examples if id(ex) not in eval_rows]
    evals = [ex for ex in examples if id(ex) in eval_rows]
    return train, evals


def prepare(
    rows: Sequence[Any],
    fmt: Format,
    columns: Mapping[str, str],
    eval_fraction: float,
    eval_rows: Sequence[Any] | None = None,
    seed: int = 0,
    max_rows: int | None = None,
) -> Prepared:
    """Validate every row (row numbers refer to the source), then subsample and split."""
    examples = subsample(validate_rows(rows, fmt, columns), max_rows, seed)
    if eval_rows is not None:
        try:
            evals = validate_rows(eval_rows, fmt, columns)
        except DatasetInvalid as e:
            raise DatasetInvalid(f"eval dataset: {e.message}") from e
        return Prepared(examples, evals, rows_sha256([*examples, *evals]), len(rows))
    train, evals = eval_split(examples, eval_fraction, seed)
    return Prepared(train, evals, rows_sha256(examples), len(rows))


# ---------------------------------------------------------------- TRL records


def chat_messages(ex: Example, system_prompt: str | None) -> list[dict[str, str]]:
    """The conversation before the target, with `system_prompt` (dataset.systemPrompt)
    first when the row has no system turn of its own."""
    msgs = [{"role": r, "content": c} for r, c in ex.messages]
    if system_prompt is not None and not (msgs and msgs[0]["role"] == "system"):
        msgs.insert(0, {"role": "system", "content": system_prompt})
    return msgs


def to_record(
    ex: Example, chat_template: bool, completion_only: bool, system_prompt: str | None = None
) -> dict[str, Any]:
    """The record TRL's SFTTrainer expects.

    Prompt-completion records get loss on the completion only (TRL's default for that
    shape); `completion_only=False` folds them into one `text`/`messages` record so the
    loss covers everything. Chat-template models get conversational records, so training
    sees the same layout the model is prompted with later."""
    if ex.text:
        return {"text": ex.text}
    if ex.messages and chat_template:
        prompt = chat_messages(ex, system_prompt)
        completion = [{"role": "assistant", "content": ex.target}]
        if completion_only:
            return {"prompt": prompt, "completion": completion}
        return {"messages": prompt + completion}
    prompt_text = ex.plain_prompt or "\n\n".join(c for _, c in ex.messages) + "\n\n"
    if completion_only:
        return {"prompt": prompt_text, "completion": ex.target}
    return {"text": prompt_text + ex.target}


def preference_record(
    ex: Example, chat_template: bool, system_prompt: str | None
) -> dict[str, Any]:
    """The record TRL's DPOTrainer expects: conversational with a chat template (so
    training sees the layout the model is prompted with), plain text without one."""
    if chat_template:
        return {
            "prompt": chat_messages(ex, system_prompt),
            "chosen": [{"role": "assistant", "content": ex.target}],
            "rejected": [{"role": "assistant", "content": ex.rejected}],
        }
    prompt = "\n\n".join(c for _, c in ex.messages) + "\n\n"
    return {"prompt": prompt, "chosen": ex.target, "rejected": ex.rejected}


def prompt_for_generation(ex: Example, tokenizer: Any, system_prompt: str | None = None) -> str:
    """The prompt text used for held-out generations (evaluation report)."""
    if ex.text:
        # No prompt/answer split in plain text: use the first half as the prompt.
        words = ex.text.split()
        return " ".join(words[: max(1, len(words) // 2)])
    if ex.messages and getattr(tokenizer, "chat_template", None):
        msgs = chat_messages(ex, system_prompt)
        return str(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
    return ex.plain_prompt or "\n\n".join(c for _, c in ex.messages) + "\n\n"


def user_text(ex: Example) -> str:
    """What the user asked, for reports: the last user turn (or the plain prompt)."""
    users = [c for r, c in ex.messages if r == "user"]
    if users:
        return users[-1]
    if ex.text:
        words = ex.text.split()
        return " ".join(words[: max(1, len(words) // 2)])
    return ex.plain_prompt


def chat_record(tokenizer: Any, system_prompt: str | None) -> dict[str, Any]:
    """The manifest's `chat`: the system prompt trained with, the chat template, and what
    the template renders for one user turn with no system message (so a default system
    prompt the template adds by itself is visible)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return {"systemPrompt": system_prompt, "chatTemplate": None}
    example = chat_messages(Example(row=0, messages=(("user", "{user}"),)), system_prompt)
    return {
        "systemPrompt": system_prompt,
        "chatTemplate": template if isinstance(template, str) else json.dumps(template),
        "chatTemplateSha256": hashlib.sha256(
            (template if isinstance(template, str) else json.dumps(template)).encode()
        ).hexdigest(),
        "renderedPrompt": str(
            tokenizer.apply_chat_template(example, tokenize=False, add_generation_prompt=True)
        ),
    }
