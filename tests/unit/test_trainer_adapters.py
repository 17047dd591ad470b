"""peft / bitsandbytes argument builders (pure)."""

from __future__ import annotations

from loraf_operator.api.models import LoRASpec, QuantizationSpec
from loraf_trainer.adapters import bnb_kwargs, lora_kwargs
from loraf_trainer.evaluate import build_report, perplexity, report_markdown


def test_lora_kwargs_defaults_alpha_to_2r() -> None:
    kw = lora_kwargs(LoRASpec(r=8, target_modules=["q_proj", "v_proj"]))
    assert kw["r"] == 8 and kw["lora_alpha"] == 16
    assert kw["target_modules"] == ["q_proj", "v_proj"]
    assert kw["task_type"] == "CAUSAL_LM" and kw["modules_to_save"] is None
    kw = lora_kwargs(
        LoRASpec(r=4, alpha=7, use_dora=True, use_rslora=True, modules_to_save=["lm_head"])
    )
    assert (kw["lora_alpha"], kw["use_dora"], kw["use_rslora"]) == (7, True, True)
    assert kw["modules_to_save"] == ["lm_head"]


def test_all_linear_is_passed_as_peft_shorthand() -> None:
    assert lora_kwargs(LoRASpec())["target_modules"] == "all-linear"


def test_bnb_kwargs() -> None:
    q = QuantizationSpec()
    assert bnb_kwargs(q, on_gpu=True) == {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": "bfloat16",
    }
    assert bnb_kwargs(q, on_gpu=False)["bnb_4bit_compute_dtype"] == "float32"
    assert bnb_kwargs(QuantizationSpec(bits=8), on_gpu=True) == {"load_in_8bit": True}


def test_report() -> None:
    rep = build_report(
        {"evalLossBase": 2.0, "evalLossAdapter": 1.0},
        [{"row": 3, "prompt": "p|x", "reference": "r", "base": "b", "adapter": "a\nb"}],
        5,
    )
    assert abs(rep["perplexityBase"] - 7.389) < 1e-3 and perplexity(None) is None
    md = report_markdown(rep, "ns/ft run 1")
    assert "| eval loss | 2.0000 | 1.0000 |" in md and "p\\|x" in md and "a<br>b" in md


def test_answer_match_scores() -> None:
    from loraf_trainer.evaluate import key_token_recall, key_tokens, loss_svg, rouge_l

    ref = "The Vela H3 warranty lasts 11 years from installation."
    assert rouge_l(ref, ref) == 1.0 and rouge_l("", ref) == 0.0
    assert rouge_l("Nothing alike here", ref) == 0.0
    # LCS "the warranty lasts years": 4 of the 5 answer words and of the 9 reference words
    assert (
        abs(rouge_l("The warranty lasts two years", ref) - 2 * (4 / 5 * 4 / 9) / (4 / 5 + 4 / 9))
        < 1e-9
    )
    assert key_tokens(ref) == ["vela", "h3", "warranty", "lasts", "11", "years", "installation"]
    assert key_token_recall("It lasts 11 years.", ref) == 3 / 7
    assert key_token_recall("yes", "ok") is None
    rep = build_report(
        {"evalLossBase": 2.0, "evalLossAdapter": 1.0},
        [
            {
                "row": 1,
                "user": "How long?",
                "prompt": "<|im_start|>user\nHow long?",
                "reference": ref,
                "base": "I don't know.",
                "adapter": ref,
                "rougeLBase": 0.0,
                "rougeLAdapter": 1.0,
                "keyRecallBase": 0.0,
                "keyRecallAdapter": 1.0,
            },
        ],
        5,
        {"train": [[1, 3.0], [2, 2.0]], "eval": [[2, 1.0]]},
    )
    assert rep["answerMatch"] == {
        "rougeLBase": 0.0,
        "rougeLAdapter": 1.0,
        "keyRecallBase": 0.0,
        "keyRecallAdapter": 1.0,
    }
    md = report_markdown(rep, "ns/ft run 1")
    assert "| How long? |" in md and "im_start" not in md  # the user's text, not the template
    assert "| answer match, ROUGE-L F1 (mean of 1) | 0.0000 | 1.0000 |" in md
    assert "loss.svg" in md
    svg = loss_svg(rep["lossHistory"])
    assert svg is not None and svg.startswith("<svg") and svg.count("<polyline") == 3
    assert loss_svg({"train": [], "eval": []}) is None
