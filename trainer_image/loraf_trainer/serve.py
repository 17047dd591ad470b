"""The `transformers` serving engine: a small OpenAI-compatible server.

One base model (loaded like the trainer loads it: hub id, s3://, PVC, GGUF) plus any
number of peft adapters, each served under its own name; the client picks one with the
OpenAI `model` field, the base model is served under its own name with adapters off.

Adapters come from run prefixes (`s3://…/run-<n>/` or its `adapter/` folder). One is
loaded only when the run's `manifest.json` exists (the upload is complete) and every
adapter file downloaded matches the manifest's sha256, so a half-uploaded or tampered
adapter is never served. The adapter list is a small JSON file (the operator mounts it
from a ConfigMap) polled every few seconds: newly listed adapters load without a restart,
a changed URI reloads the adapter, a removed one is unloaded.

Chat requests to an adapter are rendered with the chat template recorded in its run's
manifest (`chat.chatTemplate`), and, when it was trained with a system prompt
(`dataset.systemPrompt`, `chat.systemPrompt`), get that prompt when they carry no system
message of their own, so the adapter is asked the way it was trained. An adapter trained
without one gets what the chat template adds by itself, as in training.

Generation runs one request at a time (peft's active adapter is model-wide state): this
engine is for CPUs, small models and tests; vLLM is the engine for throughput.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request  # module level: FastAPI resolves the handlers' annotations here

from loraf_operator.api.run_layout import ADAPTER_CONFIG, ADAPTER_DIR, MANIFEST, RunLayout
from loraf_operator.api.serve_config import ServeConfig
from loraf_operator.api.system_prompt import with_system_prompt

from .artifacts import verify_manifest
from .storage import open_store, sha256_file

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 16
MAX_TOKENS_LIMIT = 512
#: Written by `fetch_adapter` next to the adapter files: the run's `chat` record, from the
#: manifest the copy was checked against (read again after a restart without the store).
CHAT_FILE = "loraf-chat.json"


# ------------------------------------------------------------------ the adapter list


def read_adapter_list(path: Path | None) -> dict[str, str]:
    """name → uri from the adapters file ({"adapters": [{"name", "uri"}, …]}); a missing
    or half-written file reads as "no change" to the caller (None is never returned)."""
    if path is None or not path.is_file():
        return {}
    data = json.loads(path.read_text() or "{}")
    return {str(a["name"]): str(a["uri"]) for a in data.get("adapters", [])}


# ------------------------------------------------------------------ fetching adapters


class AdapterInvalid(Exception):
    """The adapter's upload is incomplete or does not match its manifest."""


def fetch_adapter(
    uri: str, dest: Path, endpoint: str | None = None, region: str | None = None
) -> Path:
    """Download a run's adapter/ into dest after checking the run's manifest; every file
    is then re-hashed locally, so what gets loaded is what the trainer uploaded."""
    root = RunLayout.of_adapter(uri).root
    store = open_store(root, endpoint, region)
    raw = store.get_bytes(MANIFEST)
    if raw is None:
        raise AdapterInvalid(f"{root}/{MANIFEST} is missing (upload incomplete)")
    # Sizes and presence of every listed file (hashes are checked on the local copy).
    problems = verify_manifest(store, check_hashes=False)
    if problems:
        raise AdapterInvalid("; ".join(problems[:3]))
    manifest = json.loads(raw)
    expected = {
        f["path"][len(ADAPTER_DIR) + 1 :]: f["sha256"]
        for f in manifest.get("files", [])
        if f["path"].startswith(ADAPTER_DIR + "/")
    }
    if ADAPTER_CONFIG not in expected:
        raise AdapterInvalid(f"{root}: the manifest lists no {ADAPTER_DIR}/{ADAPTER_CONFIG}")
    dest.mkdir(parents=True, exist_ok=True)
    store.get_prefix(ADAPTER_DIR, dest)
    for name, digest in expected.items():
        path = dest / name
        if not path.is_file() or sha256_file(path) != digest:
            raise AdapterInvalid(f"{ADAPTER_DIR}/{name}: sha256 differs from the manifest")
    # The chat record of the manifest just checked, kept with the copy it describes.
    chat = manifest.get("chat")
    (dest / CHAT_FILE).write_text(json.dumps(chat if isinstance(chat, dict) else {}))
    return dest


def trained_chat(local: Path) -> dict[str, Any]:
    """The run manifest's `chat` record (system prompt and chat template used in
    training) of a copy `fetch_adapter` made; empty for runs from before it was recorded."""
    chat = json.loads((local / CHAT_FILE).read_text())
    return chat if isinstance(chat, dict) else {}


def adapter_rank(adapter_dir: Path) -> int | None:
    try:
        return int(json.loads((adapter_dir / ADAPTER_CONFIG).read_text())["r"])
    except (OSError, KeyError, ValueError):
        return None


# ------------------------------------------------------------------ the engine


@dataclass
class AdapterState:
    name: str
    uri: str
    state: str = "Loading"  # Loading | Ready | Failed
    reason: str | None = None
    system_prompt: str | None = None  # trained with (manifest chat.systemPrompt)
    chat_template: str | None = None  # trained with (manifest chat.chatTemplate)

    def as_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "uri": self.uri, "state": self.state}
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass
class Engine:
    """A base model plus named peft adapters; thread-safe (one generation at a time)."""

    base_name: str
    model: Any
    tokenizer: Any
    work_dir: Path
    endpoint: str | None = None
    region: str | None = None
    adapters: dict[str, AdapterState] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_config(cls, cfg: ServeConfig) -> Engine:
        from .model_loading import (
            load_model,
            load_tokenizer,
            materialize,
            pick_device,
            resolve_source,
        )
        from .storage import s3_client

        client = s3_client(cfg.endpoint, cfg.region) if cfg.base_model.s3 else None
        resolved = resolve_source(cfg.base_model, client)
        path = materialize(resolved, cfg.base_model.trust_remote_code)
        model = load_model(path, pick_device(), trust_remote_code=cfg.base_model.trust_remote_code)
        model.config.use_cache = True  # load_model turns it off for training
        model.eval()
        return cls(
            base_name=cfg.base_name,
            model=model,
            tokenizer=load_tokenizer(path, cfg.base_model.trust_remote_code),
            work_dir=cfg.work_dir,
            endpoint=cfg.endpoint,
            region=cfg.region,
        )

    # -- adapters

    def ready_names(self) -> list[str]:
        return [a.name for a in self.adapters.values() if a.state == "Ready"]

    def load_adapter(self, name: str, uri: str) -> AdapterState:
        """Fetch, verify and load one adapter (replacing one of the same name)."""
        st = AdapterState(name, uri)
        self.adapters[name] = st
        try:
            local = fetch_adapter(
                uri,
                self.work_dir / "adapters" / f"{name}-{uuid.uuid4().hex[:8]}",
                self.endpoint,
                self.region,
            )
            chat = trained_chat(local)
            st.system_prompt, st.chat_template = chat.get("systemPrompt"), chat.get("chatTemplate")
            with self._lock:
                self._attach(name, local)
            st.state = "Ready"
            log.info("adapter %s ready (%s)", name, uri)
        except Exception as e:  # one bad adapter never takes the server down
            st.state, st.reason = "Failed", f"{type(e).__name__}: {e}"[:500]
            log.warning("adapter %s failed: %s", name, st.reason)
        return st

    def _attach(self, name: str, local: Path) -> None:
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            if name in self.model.peft_config:
                self.model.delete_adapter(name)
            self.model.load_adapter(str(local), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(local), adapter_name=name)
        self.model.eval()

    def unload_adapter(self, name: str) -> None:
        from peft import PeftModel

        self.adapters.pop(name, None)
        with self._lock:
            if isinstance(self.model, PeftModel) and name in self.model.peft_config:
                if len(self.model.peft_config) > 1:
                    self.model.delete_adapter(name)
                else:  # peft cannot delete the last adapter: go back to the bare base
                    self.model = self.model.unload()
        log.info("adapter %s unloaded", name)

    def sync(self, wanted: dict[str, str]) -> None:
        """Make the loaded adapters match `wanted` (name → uri). Failed adapters are
        retried only when their URI changes (the file is re-read every poll)."""
        for name in [n for n in self.adapters if n not in wanted]:
            self.unload_adapter(name)
        for name, uri in wanted.items():
            cur = self.adapters.get(name)
            if cur is None or cur.uri != uri:
                self.load_adapter(name, uri)

    # -- generation

    def generate(self, model_name: str, prompt: str, max_tokens: int, temperature: float) -> Any:
        import torch
        from peft import PeftModel

        enc = self.tokenizer(prompt, return_tensors="pt").to(self.model.device)
        kwargs: dict[str, Any] = {
            "max_new_tokens": max(1, min(max_tokens, MAX_TOKENS_LIMIT)),
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature)
        else:
            kwargs.update(do_sample=False)
        with self._lock, torch.inference_mode():
            if model_name == self.base_name:
                if isinstance(self.model, PeftModel):
                    with self.model.disable_adapter():
                        out = self.model.generate(**enc, **kwargs)
                else:
                    out = self.model.generate(**enc, **kwargs)
            else:
                self.model.set_adapter(model_name)
                out = self.model.generate(**enc, **kwargs)
        new = out[0][enc["input_ids"].shape[1] :]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        finish = "length" if len(new) >= kwargs["max_new_tokens"] else "stop"
        return text, int(enc["input_ids"].shape[1]), len(new), finish

    def chat_prompt(self, messages: list[dict[str, Any]], model_name: str | None = None) -> str:
        """The prompt for a chat request, rendered with the chat template the adapter was
        trained with (the tokenizer's for the base and for older runs); an adapter's
        trained system prompt goes first when the request has no system message."""
        adapter = self.adapters.get(model_name or "")
        template = None
        if adapter is not None and model_name != self.base_name:
            messages = with_system_prompt(messages, adapter.system_prompt)
            template = adapter.chat_template
        if template or getattr(self.tokenizer, "chat_template", None):
            return str(
                self.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True, chat_template=template
                )
            )
        return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in messages) + "\nassistant:"


class AdapterPoller:
    """Re-reads the adapters file every `interval` seconds and syncs the engine."""

    def __init__(self, engine: Engine, path: Path | None, interval: float) -> None:
        self.engine, self.path, self.interval = engine, path, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self) -> None:
        try:
            wanted = read_adapter_list(self.path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("cannot read %s (kept the current adapters): %s", self.path, e)
            return
        self.engine.sync(wanted)

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.interval):
                self.poll_once()

        self._thread = threading.Thread(target=loop, name="adapter-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


# ------------------------------------------------------------------ HTTP API


def _error(status: int, message: str, kind: str = "invalid_request_error") -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind}})


def create_app(engine: Engine) -> Any:
    """The FastAPI app: /health, /v1/models, /v1/completions, /v1/chat/completions and
    /v1/adapters (per-adapter state, for operators and debugging)."""
    from fastapi import FastAPI

    app = FastAPI(title="loraf transformers engine")

    def known(name: str) -> bool:
        return name == engine.base_name or name in engine.ready_names()

    def sampling(body: dict[str, Any]) -> tuple[int, float]:
        return int(body.get("max_tokens") or DEFAULT_MAX_TOKENS), float(
            body.get("temperature") or 0.0
        )

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        now = int(time.time())
        data = [
            {
                "id": engine.base_name,
                "object": "model",
                "created": now,
                "owned_by": "loraf",
                "root": engine.base_name,
                "parent": None,
            }
        ]
        data += [
            {
                "id": n,
                "object": "model",
                "created": now,
                "owned_by": "loraf",
                "root": engine.adapters[n].uri,
                "parent": engine.base_name,
            }
            for n in engine.ready_names()
        ]
        return {"object": "list", "data": data}

    @app.get("/v1/adapters")
    def adapters() -> dict[str, Any]:
        return {"adapters": [a.as_dict() for a in engine.adapters.values()]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await request.json()
        name = str(body.get("model") or "")
        if not known(name):
            return _error(404, f"model {name!r} not found", "NotFoundError")
        prompt = body.get("prompt", "")
        if isinstance(prompt, list):
            if len(prompt) != 1 or not isinstance(prompt[0], str):
                return _error(400, "prompt must be a string or a list of one string")
            prompt = prompt[0]
        max_tokens, temperature = sampling(body)
        text, n_in, n_out, finish = engine.generate(name, str(prompt), max_tokens, temperature)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": name,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
            "usage": {
                "prompt_tokens": n_in,
                "completion_tokens": n_out,
                "total_tokens": n_in + n_out,
            },
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        name = str(body.get("model") or "")
        if not known(name):
            return _error(404, f"model {name!r} not found", "NotFoundError")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "messages must be a non-empty list")
        max_tokens, temperature = sampling(body)
        prompt = engine.chat_prompt(messages, name)
        text, n_in, n_out, finish = engine.generate(name, prompt, max_tokens, temperature)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": name,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": finish,
                    "message": {"role": "assistant", "content": text},
                }
            ],
            "usage": {
                "prompt_tokens": n_in,
                "completion_tokens": n_out,
                "total_tokens": n_in + n_out,
            },
        }

    return app


def serve(cfg: ServeConfig) -> None:
    """Load the model and the listed adapters, then serve until killed."""
    import uvicorn

    engine = Engine.from_config(cfg)
    poller = AdapterPoller(engine, cfg.adapters_file, cfg.poll_seconds)
    poller.poll_once()  # static registration: every listed adapter before /health is up
    poller.start()
    try:
        # LORAF_BIND_HOST: where the pod network is the host's (the dev process kubelet).
        host = os.environ.get("LORAF_BIND_HOST", cfg.host)
        uvicorn.run(create_app(engine), host=host, port=cfg.port, log_level="info")
    finally:
        poller.stop()
