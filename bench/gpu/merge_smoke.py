"""Issue 5's GPU smoke, last part: merge a QLoRA-trained adapter into a fresh bf16 load
of the base with the trainer's own `artifacts.merge_export`, then check one merged
weight against W + (alpha/r)·B·A computed from the files.

    python -m bench.gpu.merge_smoke BASE_DIR ADAPTER_DIR MERGED_DIR OUT.json
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path


def _tensor(folder: Path, name: str) -> object:
    from safetensors import safe_open

    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            if name in st.keys():  # noqa: SIM118 - safe_open has no __contains__
                return st.get_tensor(name)
    raise KeyError(name)


def main() -> int:
    base, adapter, merged, out = (Path(x) for x in sys.argv[1:5])
    from loraf_trainer import artifacts

    t0 = time.perf_counter()
    artifacts.merge_export(base, adapter, merged, "bfloat16")
    merge_s = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in merged.glob("*.safetensors"))
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    scale = cfg["lora_alpha"] / cfg["r"]
    w = "model.layers.0.self_attn.q_proj.weight"
    pre = "base_model.model.model.layers.0.self_attn.q_proj"
    a = _tensor(adapter, f"{pre}.lora_A.weight").float()  # type: ignore[attr-defined]
    b = _tensor(adapter, f"{pre}.lora_B.weight").float()  # type: ignore[attr-defined]
    expect = _tensor(base, w).float() + scale * (b @ a)  # type: ignore[attr-defined]
    got = _tensor(merged, w).float()  # type: ignore[attr-defined]
    delta = (scale * (b @ a)).abs().max().item()
    res = {
        "merge_export_s": round(merge_s, 1),
        "merged_bytes": size,
        "merged_shards": len(list(merged.glob("*.safetensors"))),
        "adapter_bytes": (adapter / artifacts.ADAPTER_WEIGHTS).stat().st_size,
        "check_tensor": w,
        "max_abs_err_vs_W_plus_BA": (got - expect).abs().max().item(),
        "max_abs_lora_delta": delta,
        "merge_device": "cpu (artifacts.merge_export loads the base with device_map cpu)",
    }
    shutil.rmtree(merged, ignore_errors=True)
    Path(out).write_text(json.dumps(res, indent=1))
    print("MERGE", json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
