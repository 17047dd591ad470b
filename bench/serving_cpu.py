"""Serving on the CPU: vLLM vs the transformers engine, 1 and 4 adapters, N concurrent clients.

Both engines serve SmolLM2-135M-Instruct (the quickstart model, GGUF converted once to a
plain folder) with rank-16 adapters on q/k/v/o (random weights: speed does not depend on
their values), on 127.0.0.1. Each client sends chat completions (greedy, 32 new tokens)
round-robin over the adapters; we report completion tokens per second over the whole
round and per-request latency p50/p99. Engine start-up time is reported apart.

    .venv/bin/python bench/serving_cpu.py            # writes bench/results/serving_cpu.json + .png

vLLM runs from hack/vllm-venv.sh with the LoRAServing builder's own flags for the slots
and the CPU flags the e2e test uses; the transformers engine is loraf_trainer.serve's
Engine behind its own FastAPI app (the server the operator's transformers pods run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "How long is the warranty?",
    "Why is the light blinking?",
    "Can I boil milk?",
    "How do I descale it?",
    "What does the brew dial do?",
    "Is the lid dishwasher safe?",
]
MAX_TOKENS = 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(port: int, path: str, body: dict[str, Any], timeout: float = 600) -> Any:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def wait_healthy(port: int, proc: subprocess.Popen[bytes], log: Path) -> float:
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"engine exited {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return time.monotonic() - t0
        except OSError:
            time.sleep(1)


def prepare(work: Path) -> tuple[Path, list[Path]]:
    """The base model folder and four adapters."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import loraf_dev.quickstart as qs
    from loraf_trainer.model_loading import ResolvedModel, materialize

    gguf = qs.gguf_path()
    base = materialize(ResolvedModel(gguf.parent, gguf.name, "smollm2", None))
    model: Any = AutoModelForCausalLM.from_pretrained(base)
    adapters = []
    for i in range(4):
        cfg = LoraConfig(
            r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            init_lora_weights=False,
        )  # fmt: skip
        pm = get_peft_model(model, cfg)
        out = work / f"a{i}"
        pm.save_pretrained(str(out))
        adapters.append(out)
        model = pm.unload()
    return base, adapters


def start_vllm(base: Path, adapters: list[Path], port: int, log: Path) -> subprocess.Popen[bytes]:
    import loraf_dev.quickstart as qs
    from loraf_operator.api.models import LoRAServing
    from loraf_operator.api.system_prompt import PLUGIN_MODULE, PROMPTS_ENV, PROMPTS_FILE
    from loraf_operator.builders import serving as build

    sv = LoRAServing.model_validate(
        {
            "metadata": {"name": "bench", "namespace": "bench"},
            "spec": {"baseModel": {"huggingFace": "bench/base"}, "maxAdapters": 4,
                     "port": port, "engineArgs": qs.CPU_VLLM_ARGS},
        }
    )  # fmt: skip
    args = build.vllm_args(sv)
    args[args.index("--model") + 1] = str(base)
    args[args.index("--host") + 1] = "127.0.0.1"
    args += ["--lora-modules", *(f"{p.name}={p}" for p in adapters)]
    venv = subprocess.run([str(ROOT / "hack" / "vllm-venv.sh")], check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    # loraf's middleware as in the pods, with a trained system prompt for every adapter,
    # so each request takes its rewrite path (the worst case).
    plugin = log.parent / "plugin"
    plugin.mkdir(exist_ok=True)
    (plugin / f"{PLUGIN_MODULE}.py").write_text(build.vllm_plugin_source())
    prompts = plugin / PROMPTS_FILE
    prompts.write_text(json.dumps({p.name: "You are a support assistant." for p in adapters}))
    env = {**os.environ, "PYTHONPATH": str(plugin), PROMPTS_ENV: str(prompts)}
    return subprocess.Popen(
        [f"{venv}/bin/vllm", "serve", *args],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip


TRANSFORMERS_SERVER = """
import sys, uvicorn
from pathlib import Path
from loraf_trainer.model_loading import load_model, load_tokenizer, pick_device
from loraf_trainer.serve import AdapterState, Engine, create_app
base, port, adapters = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
model = load_model(base, pick_device())
model.config.use_cache = True
model.eval()
engine = Engine("bench/base", model, load_tokenizer(base), Path("/tmp"))
for a in adapters:
    engine._attach(Path(a).name, Path(a))
    engine.adapters[Path(a).name] = AdapterState(Path(a).name, a, "Ready")
uvicorn.run(create_app(engine), host="127.0.0.1", port=port, log_level="warning")
"""


def start_transformers(
    base: Path, adapters: list[Path], port: int, log: Path
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", TRANSFORMERS_SERVER, str(base), str(port), *map(str, adapters)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def load(port: int, names: list[str], clients: int, per_client: int) -> dict[str, Any]:
    lat: list[float] = []
    tokens = [0]
    lock = threading.Lock()

    def client(c: int) -> None:
        for i in range(per_client):
            k = c * per_client + i
            t0 = time.monotonic()
            out = post(port, "/v1/chat/completions", {
                "model": names[k % len(names)], "max_tokens": MAX_TOKENS, "temperature": 0,
                "messages": [{"role": "user", "content": PROMPTS[k % len(PROMPTS)]}],
            })  # fmt: skip
            with lock:
                lat.append(time.monotonic() - t0)
                tokens[0] += int(out["usage"]["completion_tokens"])

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    lat.sort()
    return {
        "requests": len(lat),
        "completion_tokens": tokens[0],
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens[0] / wall, 2),
        "latency_p50_s": round(statistics.median(lat), 3),
        "latency_p99_s": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 3),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", default="1,4,8")
    p.add_argument("--requests", type=int, default=16, help="requests per round")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serving_cpu.json")
    args = p.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    work = Path(tempfile.mkdtemp(prefix="loraf-serving-bench-"))
    base, adapters = prepare(work)
    rows: list[dict[str, Any]] = []
    startup: dict[str, float] = {}
    for engine, start in (("vllm", start_vllm), ("transformers", start_transformers)):
        port = free_port()
        log = work / f"{engine}.log"
        proc = start(base, adapters, port, log)
        try:
            startup[engine] = round(wait_healthy(port, proc, log), 1)
            names = [a.name for a in adapters]
            load(port, names[:1], 1, 2)  # warm-up
            for n_adapters in (1, 4):
                for c in clients:
                    per = max(1, args.requests // c)
                    r = load(port, names[:n_adapters], c, per)
                    rows.append({"engine": engine, "adapters": n_adapters, "clients": c, **r})
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    result = {
        "benchmark": "serving_cpu",
        "command": "python bench/serving_cpu.py " + " ".join(sys.argv[1:]),
        # Load average at the end: other work on the machine slows both engines.
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        },
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to bf16)",
        "adapters": "rank 16 on q/k/v/o_proj",
        "max_tokens": MAX_TOKENS,
        "startup_s": startup,
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out}")
    return 0


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for engine, style in (("vllm", "-"), ("transformers", "--")):
        for n, marker in ((1, "o"), (4, "s")):
            rows = [r for r in result["rows"] if r["engine"] == engine and r["adapters"] == n]
            xs = [r["clients"] for r in rows]
            label = f"{engine}, {n} adapter{'s' if n > 1 else ''}"
            axes[0].plot(xs, [r["tokens_per_s"] for r in rows], style, marker=marker, label=label)
            axes[1].plot(xs, [r["latency_p99_s"] for r in rows], style, marker=marker, label=label)
    axes[0].set(xlabel="concurrent clients", ylabel="completion tokens/s", title="throughput")
    axes[1].set(xlabel="concurrent clients", ylabel="p99 latency (s)", title="latency")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Serving on {result['machine']['cpus']} CPU cores: {result['model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
