"""python -m bench.gpu.run_one '<json config>' OUT.json — one configuration, one process."""

from __future__ import annotations

import time

T_PROCESS = time.perf_counter()  # before the heavy imports: time to first step counts them

import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402


def main() -> int:
    cfg = json.loads(sys.argv[1])
    out = Path(sys.argv[2])
    if cfg["runner"] == "project":  # as the trainer's CLI does before torch loads
        from loraf_trainer.optimizations import allocator_defaults

        allocator_defaults()
    if cfg["runner"] == "unsloth":  # before anything imports transformers (it patches them)
        import unsloth  # noqa: F401
    try:
        from bench.gpu import runners

        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            res = runners.run(cfg, T_PROCESS, Path(tmp))
        res["ok"] = True
        res["versions"] = runners.versions()
        res["device"] = runners.device_info()
    except Exception as e:  # recorded, not raised: one failing config must not stop a suite
        traceback.print_exc()
        oom = "out of memory" in str(e).lower()
        res = {
            "config": cfg,
            "ok": False,
            "error": f"{type(e).__name__}: {str(e)[:500]}",
            "oom": oom,
        }
    out.write_text(json.dumps(res, indent=1))
    print(
        "RESULT",
        json.dumps({k: v for k, v in res.items() if k not in ("step_times_s", "losses", "config")}),
    )
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
