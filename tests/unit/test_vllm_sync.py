"""The vLLM sidecar against a real (tiny) HTTP server standing in for vLLM's runtime API:
registration, refusal with vLLM's reason, an engine that drops a call, removal, and the
trained system prompts published before an adapter is registered."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from loraf_operator.api.models import BaseModelSpec
from loraf_operator.api.serve_config import ServeConfig
from loraf_operator.api.system_prompt import PROMPTS_FILE
from loraf_trainer.serve import CHAT_FILE
from loraf_trainer.vllm_sync import AdapterSync, Vllm, adapter_dir

SUPPORT = "You are Corvane's support assistant."


class FakeVllm(BaseHTTPRequestHandler):
    """Just the three routes the sidecar calls, with vLLM's response shapes."""

    registered: dict[str, str] = {}
    refuse: dict[str, str] = {}
    drop_next_load = False
    prompts_file: Path | None = None
    prompts_at_load: dict[str, Any] = {}  # the sidecar's prompts file when each was loaded

    def _send(self, code: int, body: Any) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        data = [{"id": "base", "root": "/m", "parent": None}]
        data += [{"id": n, "root": p, "parent": "base"} for n, p in self.registered.items()]
        self._send(200, {"data": data})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        if self.path == "/v1/load_lora_adapter":
            if cls.drop_next_load:
                cls.drop_next_load = False
                self.connection.close()  # the engine dies mid-call
                return
            assert cls.prompts_file is not None
            cls.prompts_at_load[body["lora_name"]] = json.loads(cls.prompts_file.read_text())
            if body["lora_name"] in cls.refuse:
                msg = f"Worker failed with error '{cls.refuse[body['lora_name']]}', please check"
                self._send(500, {"error": {"message": msg}})
                return
            cls.registered[body["lora_name"]] = body["lora_path"]
        else:
            cls.registered.pop(body["lora_name"], None)
        self._send(200, "Success")

    def log_message(self, *a: Any) -> None:
        pass


@pytest.fixture
def engine() -> Iterator[str]:
    FakeVllm.registered, FakeVllm.refuse, FakeVllm.drop_next_load = {}, {}, False
    FakeVllm.prompts_at_load = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeVllm)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_sync_registers_reports_refusals_survives_a_dropped_call_and_unloads(
    engine: str, tmp_path: Path
) -> None:
    listing = tmp_path / "adapters.json"
    cfg = ServeConfig(
        base_model=BaseModelSpec(hugging_face="org/base"), base_name="base", adapters_file=listing
    )
    dest = tmp_path / "adapters"
    uris = {"a": "s3://bkt/a/run-1/", "dora": "s3://bkt/d/run-1/"}
    chats = {"a": {"systemPrompt": SUPPORT}, "dora": {"systemPrompt": None}}
    for name, uri in uris.items():  # already fetched and verified (fetch_into reuses it)
        (adapter_dir(dest, name, uri)).mkdir(parents=True)
        (adapter_dir(dest, name, uri) / CHAT_FILE).write_text(json.dumps(chats[name]))
    FakeVllm.prompts_file = dest / PROMPTS_FILE
    listing.write_text(json.dumps({"adapters": [{"name": n, "uri": u} for n, u in uris.items()]}))
    FakeVllm.refuse["dora"] = "vLLM does not yet support DoRA."
    FakeVllm.drop_next_load = True
    sync = AdapterSync(cfg, dest, Vllm(engine))

    sync.step()  # the first registration call is dropped: still Loading, no crash
    first = {a["name"]: a["state"] for a in sync.report()["adapters"]}
    assert "Loading" in first.values() and not sync.ready()

    sync.step()
    states = {a["name"]: a for a in sync.report()["adapters"]}
    assert states["a"]["state"] == "Ready"
    assert states["dora"]["state"] == "Failed"
    assert states["dora"]["reason"] == "vLLM refused it: vLLM does not yet support DoRA."
    assert FakeVllm.registered == {"a": str(adapter_dir(dest, "a", uris["a"]))}
    assert sync.ready()
    # Published before registration; the adapter trained without one has no entry.
    assert FakeVllm.prompts_at_load == {"a": {"a": SUPPORT}, "dora": {"a": SUPPORT}}

    listing.write_text(json.dumps({"adapters": []}))  # removed from the LoRAServing
    sync.step()
    assert FakeVllm.registered == {} and sync.report() == {"adapters": []}
    assert json.loads((dest / PROMPTS_FILE).read_text()) == {}
    assert not adapter_dir(dest, "a", uris["a"]).exists()
