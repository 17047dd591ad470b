"""The transformers serving engine on the real SmolLM2-135M (CPU): adapters verified
against their manifest, several adapters switched per request, the base model with
adapters off, and adapters added at runtime through the polled adapters file.

The server runs for real (uvicorn on a free localhost port, requests over HTTP);
generation is kept to a few tokens (2-core CPU)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import GGUF

BASE = "smollm2"
PROMPT = "The capital of France is"
SUPPORT = "You are Corvane's support assistant."


def _make_run(
    root: Path, model: Any, tok: Any, seed: int, r: int, system: str | None = None
) -> Path:
    """A run folder like the trainer uploads: adapter/ files, then manifest.json."""
    import torch
    from peft import LoraConfig, get_peft_model

    from loraf_trainer.artifacts import build_manifest, describe_files, upload_run
    from loraf_trainer.data import chat_record
    from loraf_trainer.storage import LocalStore

    torch.manual_seed(seed)
    # init_lora_weights=False: random B, so the adapter visibly changes the output.
    cfg = LoraConfig(
        r=r,
        lora_alpha=64 * r,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, cfg)
    staging = root.with_name(root.name + "-staging")
    peft_model.save_pretrained(str(staging / "adapter"))
    tok.save_pretrained(staging / "adapter")
    peft_model.unload()  # give the base back untouched for the next adapter/engine
    manifest = build_manifest(
        files=describe_files(staging),
        identity={},
        base_model={},
        dataset={},
        hyperparameters={"r": r},
        metrics={},
        chat=chat_record(tok, system),
    )
    upload_run(LocalStore(root), staging, manifest)
    return root


@pytest.fixture(scope="module")
def engine_and_runs(
    smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, dict[str, Path]]]:
    from loraf_operator.api.models import BaseModelSpec
    from loraf_operator.api.serve_config import ServeConfig
    from loraf_trainer.serve import Engine

    tmp = tmp_path_factory.mktemp("serve")
    pvc = tmp / "pvc"
    (pvc / "models").mkdir(parents=True)
    (pvc / "models" / "smollm2").symlink_to(smollm2_dir, target_is_directory=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("LORAF_PVC_ROOT", str(pvc))
    cfg = ServeConfig(
        base_model=BaseModelSpec.model_validate(
            {"pvc": {"claimName": "models", "path": "smollm2"}, "ggufFile": GGUF}
        ),
        base_name=BASE,
        work_dir=tmp / "work",
    )
    engine = Engine.from_config(cfg)
    runs = {
        "a": _make_run(tmp / "bucket" / "a" / "run-1", engine.model, engine.tokenizer, 1, 4),
        "b": _make_run(
            tmp / "bucket" / "b" / "run-1", engine.model, engine.tokenizer, 2, 8, SUPPORT
        ),
    }
    yield engine, runs
    mp.undo()


@pytest.fixture(scope="module")
def server(engine_and_runs: tuple[Any, dict[str, Path]]) -> Iterator[str]:
    import uvicorn

    from loraf_trainer.serve import create_app

    engine, _ = engine_and_runs
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(
        uvicorn.Config(create_app(engine), host="127.0.0.1", port=port, log_level="warning")
    )
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            break
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    yield url
    srv.should_exit = True
    t.join(timeout=10)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=120) as r:
        return json.loads(r.read())


def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _complete(url: str, model: str) -> str:
    code, body = _post(
        url + "/v1/completions",
        {"model": model, "prompt": PROMPT, "max_tokens": 3, "temperature": 0},
    )
    assert code == 200, body
    return str(body["choices"][0]["text"])


def test_fetch_refuses_incomplete_or_tampered_runs(
    engine_and_runs: tuple[Any, dict[str, Path]], tmp_path: Path
) -> None:
    import shutil

    from loraf_trainer.serve import AdapterInvalid, adapter_rank, fetch_adapter

    _, runs = engine_and_runs
    got = fetch_adapter(str(runs["b"]) + "/adapter/", tmp_path / "ok")
    assert adapter_rank(got) == 8
    no_manifest = tmp_path / "incomplete" / "run-1"
    shutil.copytree(runs["a"], no_manifest)
    (no_manifest / "manifest.json").unlink()
    with pytest.raises(AdapterInvalid, match="missing"):
        fetch_adapter(str(no_manifest), tmp_path / "x")
    tampered = tmp_path / "tampered" / "run-1"
    shutil.copytree(runs["a"], tampered)
    weights = tampered / "adapter" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes: only the hash catches it
    weights.write_bytes(bytes(data))
    with pytest.raises(AdapterInvalid, match="sha256"):
        fetch_adapter(str(tampered), tmp_path / "y")


def test_serves_base_and_adapters_and_loads_new_ones_at_runtime(
    engine_and_runs: tuple[Any, dict[str, Path]], server: str, tmp_path: Path
) -> None:
    from loraf_trainer.serve import AdapterPoller

    engine, runs = engine_and_runs
    assert _get(server + "/health") == {"status": "ok"}
    adapters_file = tmp_path / "adapters.json"
    adapters_file.write_text(json.dumps({"adapters": [{"name": "alpha", "uri": str(runs["a"])}]}))
    poller = AdapterPoller(engine, adapters_file, interval=0.2)
    poller.poll_once()  # static registration at start
    assert [m["id"] for m in _get(server + "/v1/models")["data"]] == [BASE, "alpha"]

    base_before = _complete(server, BASE)
    alpha = _complete(server, "alpha")
    assert alpha != base_before, "a random-B adapter must change greedy output"
    code, body = _post(server + "/v1/completions", {"model": "nope", "prompt": "x"})
    assert code == 404 and "nope" in body["error"]["message"]

    # Runtime: list a second adapter plus a broken one; the poller loads them, no restart.
    broken = tmp_path / "broken" / "run-1"
    broken.mkdir(parents=True)
    adapters_file.write_text(
        json.dumps(
            {
                "adapters": [
                    {"name": "alpha", "uri": str(runs["a"])},
                    {"name": "beta", "uri": str(runs["b"]) + "/adapter"},
                    {"name": "gamma", "uri": str(broken)},
                ]
            }
        )
    )
    poller.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = {a["name"]: a["state"] for a in _get(server + "/v1/adapters")["adapters"]}
            if states.get("beta") == "Ready" and states.get("gamma") == "Failed":
                break
            time.sleep(0.3)
        assert states == {"alpha": "Ready", "beta": "Ready", "gamma": "Failed"}
    finally:
        poller.stop()
    gamma = next(a for a in _get(server + "/v1/adapters")["adapters"] if a["name"] == "gamma")
    assert "manifest.json is missing" in gamma["reason"]
    assert [m["id"] for m in _get(server + "/v1/models")["data"]] == [BASE, "alpha", "beta"]
    beta = _complete(server, "beta")
    assert beta != alpha
    assert _complete(server, "alpha") == alpha  # switching back per request is exact
    assert _complete(server, BASE) == base_before  # adapters disabled for the base name

    code, body = _post(
        server + "/v1/chat/completions",
        {"model": "beta", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]},
    )
    assert code == 200 and body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] <= 2

    # Removing an adapter from the file unloads it.
    adapters_file.write_text(json.dumps({"adapters": [{"name": "beta", "uri": str(runs["b"])}]}))
    poller.poll_once()
    assert [m["id"] for m in _get(server + "/v1/models")["data"]] == [BASE, "beta"]
    assert _complete(server, "beta") == beta


def test_chat_applies_the_trained_system_prompt(
    engine_and_runs: tuple[Any, dict[str, Path]],
) -> None:
    """beta was trained with a system prompt: chat requests without one get it; alpha
    was not: the template's own default stays, as in its training; the base is untouched."""
    engine, runs = engine_and_runs
    for name, key in (("alpha", "a"), ("beta", "b")):
        if engine.adapters.get(name) is None or engine.adapters[name].state != "Ready":
            engine.load_adapter(name, str(runs[key]))
    user = [{"role": "user", "content": "How long is the warranty?"}]
    default = "You are a helpful AI assistant named SmolLM"
    assert engine.adapters["beta"].system_prompt == SUPPORT
    assert SUPPORT in engine.chat_prompt(user, "beta") and default not in engine.chat_prompt(
        user, "beta"
    )
    assert default in engine.chat_prompt(user, "alpha")
    assert default in engine.chat_prompt(user, BASE)
    own = [{"role": "system", "content": "Be brief."}, *user]
    assert SUPPORT not in engine.chat_prompt(own, "beta")  # the request's own system wins
    # The chat template comes from the run's manifest, per adapter.
    trained = json.loads((runs["b"] / "manifest.json").read_text())["chat"]["chatTemplate"]
    assert trained and engine.adapters["beta"].chat_template == trained
    brackets = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    engine.adapters["beta"].chat_template = brackets
    try:
        assert engine.chat_prompt(user, "beta") == f"[{SUPPORT}][How long is the warranty?]"
        assert default in engine.chat_prompt(user, BASE)  # the base keeps the tokenizer's
    finally:
        engine.adapters["beta"].chat_template = trained
