"""SFT, then DPO on top of the SFT adapter, through `loraf run` on SmolLM2 (issue 20).

The preference set prefers answers that state the product's facts (the quickstart
support desk's own answers) over evasive ones. The SFT run is one step on purpose, so
its adapter still scores the generic evasive answers above the product's (by mean token
log-probability); DPO has to turn that around on rows it never saw:
- the DPO run's held-out preference accuracy beats the one it started from (the SFT
  adapter's, measured by the same run before training);
- its reward margin grows during training;
- an invalid row fails the run at once with `DatasetInvalid` and its row number.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loraf_trainer import cli

from .conftest import GGUF, write_manifest

EVASIVE = (
    "I am not sure, please check the manual.",
    "I cannot help with that.",
    "Maybe. It depends.",
    "Please contact support for that.",
)
TRAIN, HELD_OUT = 24, 8


def preference_rows(quickstart_rows: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in quickstart_rows.read_text().splitlines() if line]
    return [
        {"prompt": r["instruction"], "chosen": r["output"], "rejected": EVASIVE[i % len(EVASIVE)]}
        for i, r in enumerate(rows[: TRAIN + HELD_OUT])
    ]


def _run(tmp_path: Path, name: str, spec: dict[str, Any]) -> int:
    manifest = write_manifest(tmp_path / f"{name}.yaml", name, spec)
    return cli.main(
        [
            "run",
            str(manifest),
            "--output",
            str(tmp_path / name),
            "--work-dir",
            str(tmp_path / f"w-{name}"),
        ]
    )


@pytest.fixture
def quiet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LORAF_NO_STATUS", "1")
    log = tmp_path / "termination-log"
    monkeypatch.setenv("LORAF_TERMINATION_LOG", str(log))
    return log


def _base(smollm2_dir: Path) -> dict[str, Any]:
    return {
        "baseModel": {"path": str(smollm2_dir / GGUF)},
        "lora": {"r": 8, "targetModules": ["all-linear"]},
    }


def test_dpo_on_top_of_sft_prefers_the_facts(
    tmp_path: Path,
    smollm2_dir: Path,
    quickstart_rows: Path,
    quiet: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = preference_rows(quickstart_rows)
    train, held_out = rows[:TRAIN], rows[TRAIN:]
    (tmp_path / "sft.jsonl").write_text(
        "".join(
            json.dumps({"instruction": r["prompt"], "output": r["chosen"]}) + "\n" for r in train
        )
    )
    (tmp_path / "pref.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (tmp_path / "pref-eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out))
    sft = _base(smollm2_dir) | {
        "dataset": {"path": "sft.jsonl", "format": "alpaca", "evalFraction": 0},
        "training": {"maxSteps": 1, "perDeviceBatchSize": 2, "maxSeqLength": 96, "evalPrompts": 0},
    }
    assert _run(tmp_path, "sft", sft) == 0
    dpo = _base(smollm2_dir) | {
        "objective": "dpo",
        "startFrom": {"path": "sft/run-1"},
        "dataset": {
            "path": "pref.jsonl",
            "format": "preference",
            "eval": {"path": "pref-eval.jsonl"},
        },
        "dpo": {"beta": 0.1},
        "training": {
            "maxSteps": 6,
            "learningRate": 1e-3,
            "perDeviceBatchSize": 2,
            "maxSeqLength": 96,
            "evalPrompts": 2,
            "loggingSteps": 1,
        },
    }
    assert _run(tmp_path, "dpo", dpo) == 0, quiet.read_text() if quiet.exists() else ""
    manifest = json.loads((tmp_path / "dpo" / "run-1" / "manifest.json").read_text())
    report = json.loads((tmp_path / "dpo" / "run-1" / "eval" / "report.json").read_text())
    start, after = report["preferenceAccuracyStart"], report["preferenceAccuracyAdapter"]
    assert after > start, (start, after)
    margins = [m for _, m in report["rewardMargins"]]
    assert len(margins) == 6
    assert sum(margins[-2:]) / 2 > sum(margins[:2]) / 2, margins
    assert manifest["metrics"]["preferenceAccuracyAdapter"] == after
    assert manifest["dataset"]["format"] == "preference"
    _serves_like_any_adapter(
        tmp_path, smollm2_dir, tmp_path / "dpo" / "run-1", held_out[0], monkeypatch
    )


def _serves_like_any_adapter(
    tmp_path: Path,
    smollm2_dir: Path,
    run: Path,
    row: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A DPO adapter is an adapter: the serving engine fetches its run folder, checks it
    against its manifest and answers with it (and without it under the base's name)."""
    from loraf_operator.api.mounts import ENV_PVC_ROOT
    from loraf_operator.api.serve_config import ServeConfig
    from loraf_trainer.serve import Engine

    pvc = tmp_path / "pvc"
    (pvc / "models").mkdir(parents=True)
    (pvc / "models" / "smollm2").symlink_to(smollm2_dir, target_is_directory=True)
    monkeypatch.setenv(ENV_PVC_ROOT, str(pvc))
    cfg = ServeConfig.model_validate(
        {
            "baseModel": {"pvc": {"claimName": "models", "path": "smollm2"}, "ggufFile": GGUF},
            "baseName": "base",
            "workDir": str(tmp_path / "serve"),
        }
    )
    engine = Engine.from_config(cfg)
    state = engine.load_adapter("dpo", str(run))
    assert state.state == "Ready", state.reason
    prompt = engine.chat_prompt([{"role": "user", "content": row["prompt"]}], "dpo")
    adapter, _, produced, _ = engine.generate("dpo", prompt, 24, 0.0)
    base, _, _, _ = engine.generate("base", prompt, 24, 0.0)
    assert produced > 0 and adapter.strip()
    assert adapter != base, "the served DPO adapter must change the greedy answer"


def test_invalid_preference_row_fails_fast_with_its_row_number(
    tmp_path: Path, smollm2_dir: Path, quickstart_rows: Path, quiet: Path
) -> None:
    rows = preference_rows(quickstart_rows)[:6]
    del rows[4]["rejected"]
    (tmp_path / "pref.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = _base(smollm2_dir) | {
        "objective": "dpo",
        "dataset": {"path": "pref.jsonl", "format": "preference"},
        "training": {"maxSteps": 1},
    }
    rc = _run(tmp_path, "bad", spec)
    assert rc == 65  # DatasetInvalid (api/exitcodes.py)
    assert "row 5: field 'rejected' is missing/empty" in quiet.read_text()
