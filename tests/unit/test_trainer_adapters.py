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
