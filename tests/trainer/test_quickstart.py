"""The quickstart on CPU: SmolLM2-135M-Instruct + LoRA r=8, 16 steps of 2 rows, the Zephyr
kettle support dataset from examples/. One training run (module fixture), then checks:
eval loss falls, the adapter loads on the base and moves answers toward the domain, the
merged weights match base+adapter, and the manifest verifies.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loraf_trainer import cli
from loraf_trainer.artifacts import verify_manifest
from loraf_trainer.storage import LocalStore

from .conftest import GGUF, make_pvc_root, make_spec, write_manifest

DOMAIN_MARKERS = ("Kettlebot", "Zephyr", "Brewed with care")


@pytest.fixture(scope="module")
def quickstart_run(
    tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path, quickstart_rows: Path
) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("quickstart")
    root = make_pvc_root(tmp / "pvc", smollm2_dir, quickstart_rows)
    spec = make_spec(
        output={"s3": "s3://unused/quickstart", "mergedWeights": True, "adapterDtype": "float32"}
    )
    manifest = write_manifest(tmp / "quickstart.yaml", "quickstart", spec)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORAF_NO_STATUS", "1")
        mp.setenv("LORAF_TERMINATION_LOG", str(tmp / "termination-log"))
        rc = cli.main(
            [
                "run",
                str(manifest),
                "--output",
                str(tmp / "out"),
                "--pvc-root",
                str(root),
                "--work-dir",
                str(tmp / "work"),
            ]
        )
    assert rc == 0, (
        (tmp / "termination-log").read_text() if (tmp / "termination-log").exists() else rc
    )
    run_dir = tmp / "out" / "run-1"
    yield {
        "run_dir": run_dir,
        "manifest": json.loads((run_dir / "manifest.json").read_text()),
        "report": json.loads((run_dir / "eval" / "report.json").read_text()),
    }


def test_eval_loss_falls_clearly(quickstart_run: dict[str, Any]) -> None:
    rep = quickstart_run["report"]
    base, adapter = rep["evalLossBase"], rep["evalLossAdapter"]
    print(
        f"\nquickstart eval loss: base {base:.3f} -> adapter {adapter:.3f} "
        f"(perplexity {rep['perplexityBase']:.1f} -> {rep['perplexityAdapter']:.1f})"
    )
    assert adapter < 0.6 * base
    m = quickstart_run["manifest"]["metrics"]
    assert m["steps"] == 16 and m["trainableParams"] > 0
    # r=8 all-linear on a 135M model: ~1.8 % (the 0.1-1 % rule of thumb is for 7B+ models).
    assert 0.1 < 100 * m["trainableParams"] / m["totalParams"] < 5.0


def test_generations_move_toward_the_domain(quickstart_run: dict[str, Any]) -> None:
    gens = quickstart_run["report"]["generations"]
    assert len(gens) == 3

    def hits(key: str) -> int:
        return sum(any(mark in g[key] for mark in DOMAIN_MARKERS) for g in gens)

    print(f"\ndomain markers in answers: base {hits('base')}/3, adapter {hits('adapter')}/3")
    assert hits("adapter") >= 2 and hits("adapter") > hits("base")
    md = (quickstart_run["run_dir"] / "eval" / "report.md").read_text()
    assert "| eval loss |" in md


def test_manifest_verifies_and_lists_everything(quickstart_run: dict[str, Any]) -> None:
    run_dir = quickstart_run["run_dir"]
    assert verify_manifest(LocalStore(run_dir)) == []
    paths = {f["path"] for f in quickstart_run["manifest"]["files"]}
    assert {
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "eval/report.json",
        "eval/report.md",
        "merged/config.json",
    } <= paths
    assert any(p.startswith("adapter/tokenizer") for p in paths)
    man = quickstart_run["manifest"]
    assert man["dataset"]["sha256"] and man["dataset"]["trainRows"] > man["dataset"]["evalRows"] > 0
    assert man["hyperparameters"]["lora"]["alpha"] == 16
    assert man["baseModel"]["ggufFile"] == GGUF
    assert not any(p.startswith("checkpoints/") for p in paths)


def _base_dir(pkg: Path) -> Path:
    from loraf_trainer.model_loading import ResolvedModel, materialize

    return materialize(ResolvedModel(pkg, GGUF, "smollm2", None))


def test_adapter_loads_on_base_and_merged_logits_match(
    quickstart_run: dict[str, Any], smollm2_dir: Path
) -> None:
    import torch
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = quickstart_run["run_dir"]
    with safe_open(str(run_dir / "adapter" / "adapter_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}  # noqa: SIM118 (not a dict)
    tok = AutoTokenizer.from_pretrained(run_dir / "adapter")
    msgs = [{"role": "user", "content": "Why is the Steam Halo blinking red?"}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    ids = dict(tok(str(prompt), return_tensors="pt", add_special_tokens=False))
    base = AutoModelForCausalLM.from_pretrained(_base_dir(smollm2_dir), dtype=torch.float32)
    with torch.no_grad():
        base_logits = base(**ids).logits
        peft_model = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
        adapted = peft_model(**ids).logits
        merged = AutoModelForCausalLM.from_pretrained(run_dir / "merged", dtype=torch.float32)
        merged_logits = merged(**ids).logits
    # The adapter changes the model...
    assert (adapted - base_logits).abs().max() > 1.0
    # ...and the merged weights reproduce base+adapter (fp32 merge: rounding only).
    diff = (merged_logits - adapted).abs().max().item()
    print(f"\nmax |merged - (base+adapter)| logit difference: {diff:.2e}")
    assert diff < 1e-3 * adapted.abs().max().item()
    assert not hasattr(merged.config, "quantization_config")
