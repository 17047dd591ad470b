"""Preference rows and DPO's configuration (objective dpo, issue 20): pure, no torch."""

from __future__ import annotations

from typing import Any

import pytest

from loraf_operator.api.models import LoRAFineTuneSpec
from loraf_trainer import callbacks, data, dpo
from loraf_trainer.errors import DatasetInvalid
from tests.manifests import MINIMAL_SPEC, mutate


def pref(i: int, **over: Any) -> dict[str, Any]:
    return {"prompt": f"question {i}", "chosen": f"fact {i}", "rejected": "not sure", **over}


def test_preference_row_string_or_chat_prompt() -> None:
    ex = data.validate_row(pref(1), 1, "preference", {})
    assert (ex.messages, ex.target, ex.rejected) == (
        (("user", "question 1"),),
        "fact 1",
        "not sure",
    )
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q"}]
    answers = [{"role": "assistant", "content": "a"}]
    ex2 = data.validate_row(
        pref(2, prompt=chat, chosen=answers, rejected=[{"role": "assistant", "content": "b"}]),
        2,
        "preference",
        {},
    )
    assert ex2.messages == (("system", "be brief"), ("user", "q")) and ex2.target == "a"
    assert ex2.rejected == "b"
    assert data.preference_record(ex, True, "sys") == {
        "prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "question 1"}],
        "chosen": [{"role": "assistant", "content": "fact 1"}],
        "rejected": [{"role": "assistant", "content": "not sure"}],
    }
    assert data.preference_record(ex, False, None)["prompt"] == "question 1\n\n"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "q", "chosen": "a"}, "row 3: field 'rejected' is missing/empty"),
        ({"prompt": "q", "chosen": "", "rejected": "b"}, "row 3: field 'chosen' is missing/empty"),
        (
            {"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"},
            "row 3: field 'prompt' must end with a user message",
        ),
    ],
)
def test_bad_preference_row_names_row_and_field(row: dict[str, Any], message: str) -> None:
    with pytest.raises(DatasetInvalid, match=message):
        data.validate_rows([pref(1), pref(2), row], "preference", {})


def test_column_mapping_and_hashes_of_other_formats_unchanged() -> None:
    row = {"q": "question", "good": "fact", "bad": "evasive"}
    cols = {"prompt": "q", "chosen": "good", "rejected": "bad"}
    ex = data.validate_row(row, 1, "preference", cols)
    assert (ex.target, ex.rejected) == ("fact", "evasive")
    # rejected takes part in the hash only where it exists: SFT datasets keep their sha256
    alpaca = data.validate_row({"instruction": "q", "output": "a"}, 1, "alpaca", {})
    assert data.rows_sha256([alpaca]) == data.rows_sha256([data.Example(**vars(alpaca))])
    assert data.rows_sha256([ex]) != data.rows_sha256(
        [data.Example(**(vars(ex) | {"rejected": ""}))]
    )


def dpo_spec(**dpo_knobs: Any) -> LoRAFineTuneSpec:
    spec = mutate(
        {"spec": MINIMAL_SPEC}, **{"spec.objective": "dpo", "spec.dataset.format": "preference"}
    )["spec"]
    if dpo_knobs:
        spec["dpo"] = dpo_knobs
    return LoRAFineTuneSpec.model_validate(spec)


def test_dpo_config_keeps_the_runs_schedule_and_adds_dpo_knobs() -> None:
    sft: dict[str, Any] = {"learning_rate": 5e-4, "packing": False, "seed": 3}
    sft |= {"completion_only_loss": True, "dataset_text_field": "text"}
    kw = dpo.config_kwargs(sft, dpo_spec(beta=0.3, lossType="ipo"))
    assert kw == {"learning_rate": 5e-4, "seed": 3, "beta": 0.3, "loss_type": ["ipo"]}
    assert dpo.config_kwargs(sft, dpo_spec())["beta"] == 0.1  # defaults when spec.dpo is unset


def test_dpo_log_metrics_reach_progress() -> None:
    logs = {
        "loss": 0.6,
        "rewards/margins": 0.25,
        "rewards/accuracies": 0.75,
        "eval_rewards/margins": 9,
    }
    assert callbacks.dpo_fields(logs) == {"rewardMargin": 0.25, "rewardAccuracy": 0.75}
    assert callbacks.dpo_fields({"loss": 1.0}) == {}
