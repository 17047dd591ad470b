"""The system-prompt middleware vLLM runs (api.system_prompt), against a recording ASGI app:
which requests it rewrites, and that everything else reaches vLLM byte for byte."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from loraf_operator.api.system_prompt import SystemPromptMiddleware, with_system_prompt

SUPPORT = "You are Corvane's support assistant."
CHAT = "/v1/chat/completions"


class Recorder:
    """The downstream app: what vLLM would have received."""

    def __init__(self) -> None:
        self.body = b""
        self.headers: dict[bytes, bytes] = {}
        self.after_body: dict[str, Any] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.body, self.headers = b"", dict(scope["headers"])
        while True:
            msg = await receive()
            self.body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        self.after_body = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})


def call(
    mw: SystemPromptMiddleware, body: bytes, path: str = CHAT, chunks: int = 1
) -> Recorder:
    rec = mw.app
    assert isinstance(rec, Recorder)
    step = max(1, len(body) // chunks)
    parts = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
    inbox: list[dict[str, Any]] = [
        {"type": "http.request", "body": p, "more_body": i < len(parts) - 1}
        for i, p in enumerate(parts)
    ]
    inbox.append({"type": "http.disconnect"})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(msg: MutableMapping[str, Any]) -> None:
        sent.append(dict(msg))

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
    }
    asyncio.run(mw(scope, receive, send))
    assert sent and sent[0]["status"] == 200  # the response passed through
    assert rec.after_body == {"type": "http.disconnect"}  # and the client's events after it
    return rec


def middleware(tmp_path: Path, prompts: dict[str, str]) -> SystemPromptMiddleware:
    f = tmp_path / "system-prompts.json"
    f.write_text(json.dumps(prompts))
    return SystemPromptMiddleware(Recorder(), str(f))


def request(model: str, *messages: dict[str, str], **extra: Any) -> bytes:
    return json.dumps({"model": model, "messages": list(messages), **extra}).encode()


USER = {"role": "user", "content": "How long is the warranty?"}


def test_a_request_to_an_adapter_without_a_system_message_gets_the_trained_prompt(
    tmp_path: Path,
) -> None:
    mw = middleware(tmp_path, {"support": SUPPORT})
    rec = call(mw, request("support", USER, stream=True, max_tokens=8), chunks=3)
    got = json.loads(rec.body)
    assert got["messages"] == [{"role": "system", "content": SUPPORT}, USER]
    assert (got["stream"], got["max_tokens"]) == (True, 8)  # the rest kept
    assert rec.headers[b"content-length"] == str(len(rec.body)).encode()


def test_what_the_rule_does_not_cover_reaches_vllm_byte_for_byte(tmp_path: Path) -> None:
    mw = middleware(tmp_path, {"support": SUPPORT})
    own = request("support", {"role": "system", "content": "Be brief."}, USER)
    for body in (
        own,  # the request's own system message wins
        request("other-adapter", USER),  # trained without one
        request("org/base", USER),  # the base model
        b'{"model": "support", "messages": [',  # vLLM judges a broken body itself
        b'{"model": "support", "messages": "hi"}',
    ):
        rec = call(mw, body)
        assert rec.body == body
        assert rec.headers[b"content-length"] == str(len(body)).encode()
    rec = call(mw, request("support", USER), path="/v1/completions")
    assert json.loads(rec.body)["messages"] == [USER]


def test_the_prompts_file_is_reread_when_the_sidecar_changes_it(tmp_path: Path) -> None:
    mw = SystemPromptMiddleware(Recorder(), str(tmp_path / "system-prompts.json"))
    assert json.loads(call(mw, request("support", USER)).body)["messages"] == [USER]  # no file
    f = tmp_path / "system-prompts.json"
    f.write_text(json.dumps({"support": SUPPORT}))
    assert json.loads(call(mw, request("support", USER)).body)["messages"][0]["content"] == SUPPORT
    f.write_text(json.dumps({"support": "Answer in French."}))
    os.utime(f, ns=(1, 1))  # a new mtime even on a coarse clock
    assert json.loads(call(mw, request("support", USER)).body)["messages"][0]["content"] == (
        "Answer in French."
    )
    f.write_text("{half a file")
    assert json.loads(call(mw, request("support", USER)).body)["messages"] == [USER]


def test_with_system_prompt() -> None:
    assert with_system_prompt([USER], None) == [USER]
    assert with_system_prompt([USER], SUPPORT) == [{"role": "system", "content": SUPPORT}, USER]
    own = [{"role": "system", "content": "x"}, USER]
    assert with_system_prompt(own, SUPPORT) is own
