"""The trained system prompt at serving time: one rule, both engines.

A chat request to an adapter that was trained with a system prompt (`dataset.systemPrompt`,
recorded in its run manifest as `chat.systemPrompt`) and that carries no system message of
its own gets that prompt as its first message, so the adapter is asked the way it was
trained. The transformers engine calls `with_system_prompt` itself. vLLM renders every
request with one server-wide template and has no per-adapter default system message, so
the same rule runs inside vLLM's API server as an ASGI middleware
(`vllm serve --middleware loraf_vllm_plugin.SystemPromptMiddleware`): the operator ships
this file, verbatim, in the LoRAServing's ConfigMap as `loraf_vllm_plugin.py` and puts
that folder on vLLM's PYTHONPATH. The vLLM sidecar writes each served adapter's prompt to
the JSON file named by `LORAF_SYSTEM_PROMPTS` (`{"<adapter>": "<prompt>"}`) before it
registers the adapter, and the middleware re-reads the file when it changes.

In the request path, not a proxy in front of it: no extra hop, and responses (streamed or
not) pass through untouched. Only the request body of `POST …/v1/chat/completions` is
read, and it is changed only when the rule applies.

Standard library only: it is imported by vLLM's image, which has no loraf code.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

log = logging.getLogger("loraf.system_prompt")

#: The env var naming the {adapter: system prompt} file the vLLM sidecar keeps, and the
#: file's name in the sidecar's adapter folder.
PROMPTS_ENV = "LORAF_SYSTEM_PROMPTS"
PROMPTS_FILE = "system-prompts.json"
#: The module name this file is shipped under into vLLM's pod.
PLUGIN_MODULE = "loraf_vllm_plugin"
MIDDLEWARE = f"{PLUGIN_MODULE}.SystemPromptMiddleware"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def with_system_prompt(messages: list[dict[str, Any]], system: str | None) -> list[dict[str, Any]]:
    """`system` first, unless it is None or the request has a system message."""
    if system is None or any(m.get("role") == "system" for m in messages):
        return messages
    return [{"role": "system", "content": system}, *messages]


def rewrite_chat_body(body: bytes, prompts: dict[str, str]) -> bytes | None:
    """The chat request body with the named adapter's prompt applied; None when the rule
    does not apply (another model, a system message of its own, a body vLLM should judge)."""
    try:
        req = json.loads(body)
    except ValueError:
        return None
    if not isinstance(req, dict) or not isinstance(req.get("messages"), list):
        return None
    model = req.get("model")
    system = prompts.get(model) if isinstance(model, str) else None
    messages = req["messages"]
    if not all(isinstance(m, dict) for m in messages):
        return None
    new = with_system_prompt(messages, system)
    if new is messages:
        return None
    return json.dumps({**req, "messages": new}).encode()


class PromptFile:
    """The sidecar's {adapter: prompt} file, re-read when its mtime or size changes; a
    missing or unreadable file means no prompts (requests pass unchanged)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._key: tuple[int, int] | None = None
        self._prompts: dict[str, str] = {}

    def get(self) -> dict[str, str]:
        if not self.path:
            return {}
        try:
            st = os.stat(self.path)
        except OSError:
            return {}
        key = (st.st_mtime_ns, st.st_size)
        if key != self._key:
            try:
                with open(self.path, encoding="utf-8") as f:
                    data = json.load(f)
                self._prompts = {
                    str(k): v for k, v in data.items() if isinstance(v, str)
                } if isinstance(data, dict) else {}
            except (OSError, ValueError) as e:
                log.warning("system prompts file %s unreadable: %s", self.path, e)
                self._prompts = {}
            self._key = key
        return self._prompts


class SystemPromptMiddleware:
    """ASGI middleware applying `with_system_prompt` to chat requests naming an adapter."""

    def __init__(self, app: App, prompts_file: str | None = None) -> None:
        self.app = app
        self.prompts = PromptFile(prompts_file or os.environ.get(PROMPTS_ENV))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        is_chat = (
            scope.get("type") == "http"
            and scope.get("method") == "POST"
            and str(scope.get("path", "")).rstrip("/").endswith("/v1/chat/completions")
        )
        prompts = self.prompts.get() if is_chat else {}
        if not prompts:
            return await self.app(scope, receive, send)
        chunks: list[bytes] = []
        while True:
            msg = await receive()
            if msg.get("type") != "http.request":
                return  # the client went away before its request was whole
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        new = rewrite_chat_body(body, prompts)
        if new is not None:
            kept = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
            scope = {**scope, "headers": [*kept, (b"content-length", str(len(new)).encode())]}
            body = new
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: the client's disconnect
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
