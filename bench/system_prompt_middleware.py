"""What loraf's system-prompt middleware adds to a vLLM chat request, in microseconds.

The middleware (operator/loraf_operator/api/system_prompt.py) runs inside vLLM's API server
on every `POST /v1/chat/completions`: it reads the body and, for a request naming an
adapter trained with a system prompt and carrying none, parses and re-serialises it. This
measures that cost against the same ASGI call without the middleware, for a short chat
and a long one (a 32 KB conversation), on three paths: rewritten (the rule applies),
passed through after parsing (the request has its own system message), and a model with
no prompt (the base model: parsed, then replayed as it came).

    .venv/bin/python bench/system_prompt_middleware.py

writes bench/results/system_prompt_middleware.json.

Reported per case: median microseconds per request over 7 rounds of 2,000 requests, with
min and max, and the overhead against the bare call.
"""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from loraf_operator.api.system_prompt import SystemPromptMiddleware  # noqa: E402

ROUNDS, REQUESTS = 7, 2000
SUPPORT = "You are the support assistant of Corvane Energy, maker of the Vela H3 battery."


async def drain(scope: Any, receive: Any, send: Any) -> None:
    """Stands in for vLLM's app: reads the whole body, answers nothing."""
    while (await receive()).get("more_body"):
        pass


def body(turns: int, model: str, system: bool) -> bytes:
    msgs = [{"role": "system", "content": "Be brief."}] if system else []
    for i in range(turns):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": "word " * 60})
    return json.dumps({"model": model, "messages": msgs, "max_tokens": 32}).encode()


async def time_calls(app: Any, raw: bytes) -> float:
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": [(b"content-length", str(len(raw)).encode())]}  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(msg: Any) -> None:
        pass

    t = time.perf_counter()
    for _ in range(REQUESTS):
        await app(scope, receive, send)
    return (time.perf_counter() - t) / REQUESTS * 1e6


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "system-prompts.json"
        prompts.write_text(json.dumps({"support": SUPPORT}))
        mw = SystemPromptMiddleware(drain, str(prompts))
        cases = {
            f"{size}/{path}": body(turns, model, own)
            for size, turns in (("short", 2), ("long", 100))
            for path, model, own in (
                ("rewritten", "support", False),
                ("own-system-message", "support", True),
                ("base-model", "org/base", False),
            )
        }
        samples: dict[str, dict[str, list[float]]] = {c: {"bare": [], "mw": []} for c in cases}
        for _ in range(ROUNDS):  # interleaved: every case and both sides each round
            for case, raw in cases.items():
                samples[case]["bare"].append(asyncio.run(time_calls(drain, raw)))
                samples[case]["mw"].append(asyncio.run(time_calls(mw, raw)))
    results = {}
    overheads = {case: [m - b for m, b in zip(s["mw"], s["bare"], strict=True)]
                 for case, s in samples.items()}  # fmt: skip
    for case, s in samples.items():
        over = overheads[case]
        results[case] = {
            "body_bytes": len(cases[case]),
            "bare_us": round(statistics.median(s["bare"]), 2),
            "middleware_us": round(statistics.median(s["mw"]), 2),
            "overhead_us": {"median": round(statistics.median(over), 2),
                            "min": round(min(over), 2), "max": round(max(over), 2)},
        }  # fmt: skip
    out = {
        "what": "microseconds per chat request added by loraf's system-prompt middleware",
        "command": "python bench/system_prompt_middleware.py",
        "rounds": ROUNDS,
        "requests_per_round": REQUESTS,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cases": results,
    }
    dest = ROOT / "bench" / "results" / "system_prompt_middleware.json"
    dest.write_text(json.dumps(out, indent=2) + "\n")
    for case, over in overheads.items():
        spread = f"{min(over):.1f}–{max(over):.1f}"
        print(f"{case:28s} {len(cases[case]):6d} B  +{statistics.median(over):7.1f} µs ({spread})")


if __name__ == "__main__":
    main()
