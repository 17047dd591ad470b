"""The vLLM engine's adapter sidecar: `loraf serve --sync-vllm DIR`.

vLLM is started with LoRA slots but no adapters; this process makes its adapters match
the mounted adapter list, without restarting it:
- each listed adapter is fetched (the run's manifest and every file's sha256 checked, by
  `serve.fetch_adapter`) into DIR/<name>-<hash of its uri>, atomically, so vLLM never
  reads half an adapter and a new URI never overwrites the folder vLLM is serving from;
- it is registered through vLLM's runtime API (`POST /v1/load_lora_adapter`, enabled by
  VLLM_ALLOW_RUNTIME_LORA_UPDATING); what vLLM refuses (DoRA, a rank above
  --max-lora-rank, …) is `Failed` with vLLM's own reason, and the others keep serving;
- a name removed from the list is unloaded (`/v1/unload_lora_adapter`);
- an engine that restarted (its /v1/models lacks adapters) gets them registered again;
- each served adapter's trained system prompt (its manifest's `chat.systemPrompt`) is
  written to DIR/system-prompts.json before the adapter is registered, where the
  middleware vLLM runs (`loraf_operator.api.system_prompt`) reads it: chat requests
  naming that adapter without a system message get the prompt, as on the transformers
  engine.
Its own small HTTP server on the config's syncPort answers `/v1/adapters` (each adapter's
state, the shape the transformers engine serves) and `/ready` (200 once every listed
adapter is served or has failed: the replica's readiness).

vLLM's filesystem resolver plugin is not used: it registers an adapter only when a request
names it (so /v1/models does not list it), it requires adapter_config.json's
base_model_name_or_path to equal vLLM's --model path, and it reports no reason on failure.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from loraf_operator.api.serve_config import ServeConfig
from loraf_operator.api.system_prompt import PROMPTS_FILE

from .serve import AdapterState, fetch_adapter, read_adapter_list, trained_chat

log = logging.getLogger("loraf.vllm_sync")

HTTP_TIMEOUT = 30.0


def adapter_dir(dest: Path, name: str, uri: str) -> Path:
    return dest / f"{name}-{hashlib.sha256(uri.encode()).hexdigest()[:10]}"


def fetch_into(cfg: ServeConfig, dest: Path, name: str, uri: str) -> Path:
    """The verified local copy of one adapter (fetched once per name and uri)."""
    final = adapter_dir(dest, name, uri)
    if final.is_dir():
        return final
    tmp = dest / f".{final.name}.part"
    shutil.rmtree(tmp, ignore_errors=True)
    fetch_adapter(uri, tmp, cfg.endpoint, cfg.region)
    tmp.rename(final)
    return final


def trained_system_prompt(path: Path) -> str | None:
    prompt = trained_chat(path).get("systemPrompt")
    return prompt if isinstance(prompt, str) else None


def write_prompts(path: Path, prompts: dict[str, str]) -> None:
    """Atomically, so the middleware never reads half a file."""
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(prompts, sort_keys=True))
    tmp.replace(path)


def vllm_reason(message: str) -> str:
    """vLLM's error without its wrapping ("Call to add_lora method failed: Worker failed
    with error '<reason>', please check the stack trace …")."""
    m = re.search(r"failed with error '(.+?)'(?:, please|$)", message, re.S)
    return (m.group(1) if m else message).strip()[:500]


class Vllm:
    """The few calls of vLLM's OpenAI server this sidecar makes."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _call(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def adapters(self) -> dict[str, str] | None:
        """Registered adapters (name → path), or None while the engine is not up."""
        try:
            code, raw = self._call("/v1/models")
        except OSError:
            return None
        if code != 200:
            return None
        data = json.loads(raw).get("data", [])
        return {str(m["id"]): str(m.get("root")) for m in data if m.get("parent") is not None}

    def load(self, name: str, path: Path, replace: bool) -> str | None:
        """Register an adapter; vLLM's reason when it refuses, else None."""
        body = {"lora_name": name, "lora_path": str(path), "load_inplace": replace}
        code, raw = self._call("/v1/load_lora_adapter", body)
        if code == 200:
            return None
        try:
            message = str(json.loads(raw)["error"]["message"])
        except (ValueError, KeyError, TypeError):
            message = raw.decode(errors="replace")
        return vllm_reason(message) or f"HTTP {code}"

    def unload(self, name: str) -> None:
        self._call("/v1/unload_lora_adapter", {"lora_name": name})


@dataclass
class AdapterSync:
    cfg: ServeConfig
    dest: Path
    engine: Vllm
    states: dict[str, AdapterState] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    stale: dict[str, Path] = field(default_factory=dict)  # a name's copy from its old uri
    engine_up: bool = False
    prompts: dict[str, str] | None = None  # as last written to PROMPTS_FILE
    lock: threading.Lock = field(default_factory=threading.Lock)

    def step(self) -> None:
        """One pass: fetch what is new, then make vLLM's adapters match the list."""
        try:
            wanted = read_adapter_list(self.cfg.adapters_file)
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("cannot read the adapter list (kept the current one): %s", e)
            return
        for name, uri in wanted.items():
            cur = self.states.get(name)
            if cur is not None and cur.uri == uri:
                continue  # known (a failed one is retried when its uri changes)
            st = AdapterState(name, uri)
            try:
                path = fetch_into(self.cfg, self.dest, name, uri)
                st.system_prompt = trained_system_prompt(path)
                if (prev := self.paths.get(name)) is not None and prev != path:
                    self.stale[name] = prev  # removed once the new copy is served
                self.paths[name] = path
            except Exception as e:
                st.state, st.reason = "Failed", f"{type(e).__name__}: {e}"[:500]
                log.error("adapter %s (%s) not served: %s", name, uri, st.reason)
            with self.lock:
                self.states[name] = st
        registered = self.engine.adapters()
        self.engine_up = registered is not None
        if registered is None:
            return
        for name in [n for n in registered if n not in wanted]:
            try:
                self.engine.unload(name)
                log.info("adapter %s unloaded", name)
            except OSError as e:  # the engine went away mid-call: next pass
                log.warning("unloading adapter %s: %s", name, e)
        for name in [n for n in self.states if n not in wanted]:
            with self.lock:
                self.states.pop(name)
            if (p := self.paths.pop(name, None)) is not None:
                shutil.rmtree(p, ignore_errors=True)
        self.publish_prompts()
        for name, st in list(self.states.items()):
            if st.state == "Failed":
                continue
            path = self.paths[name]
            if registered.get(name) == str(path):
                st.state = "Ready"
                continue
            try:
                why = self.engine.load(name, path, replace=name in registered)
            except OSError as e:  # the engine went away mid-call: still Loading, next pass
                log.warning("registering adapter %s: %s", name, e)
                continue
            if why is None:
                st.state = "Ready"
                log.info("adapter %s served from %s", name, path)
                if (prev := self.stale.pop(name, None)) is not None:
                    shutil.rmtree(prev, ignore_errors=True)
            else:
                st.state, st.reason = "Failed", f"vLLM refused it: {why}"
                log.error("adapter %s: %s", name, st.reason)

    def publish_prompts(self) -> None:
        """The prompts of the adapters listed and fetched, before any is registered."""
        prompts = {
            n: s.system_prompt
            for n, s in self.states.items()
            if s.state != "Failed" and s.system_prompt is not None
        }
        if prompts != self.prompts:
            write_prompts(self.dest / PROMPTS_FILE, prompts)
            self.prompts = prompts

    def report(self) -> dict[str, Any]:
        with self.lock:
            return {"adapters": [s.as_dict() for s in self.states.values()]}

    def ready(self) -> bool:
        with self.lock:
            return self.engine_up and all(s.state != "Loading" for s in self.states.values())


def status_server(sync: AdapterSync, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/v1/adapters":
                code, body = 200, sync.report()
            elif self.path == "/ready":
                ok = sync.ready()
                code, body = (200 if ok else 503), {"ready": ok}
            elif self.path == "/health":
                code, body = 200, {"status": "ok"}
            else:
                code, body = 404, {"error": "not found"}
            raw = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, format: str, *args: Any) -> None:  # quiet probes
            log.debug(format, *args)

    return ThreadingHTTPServer((host, port), Handler)


def run(cfg: ServeConfig, dest: Path, stop: threading.Event | None = None) -> None:
    """Sync until stopped (the sidecar's main loop)."""
    if cfg.sync_port is None:
        raise SystemExit("the serve config has no syncPort (is the engine vllm?)")
    dest.mkdir(parents=True, exist_ok=True)
    sync = AdapterSync(cfg, dest, Vllm(f"http://127.0.0.1:{cfg.port}"))
    # LORAF_BIND_HOST: where the pod network is the host's (the dev process kubelet).
    server = status_server(sync, os.environ.get("LORAF_BIND_HOST", cfg.host), cfg.sync_port)
    threading.Thread(target=server.serve_forever, name="status", daemon=True).start()
    stop = stop or threading.Event()
    try:
        while True:
            sync.step()
            # Quick passes until the engine is up and every adapter settled.
            if stop.wait(1.0 if not sync.ready() else cfg.poll_seconds):
                return
    finally:
        server.shutdown()
