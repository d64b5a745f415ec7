"""The remote engine: generation runs on an OpenAI-compatible upstream (vLLM or another Teller).

Teller keeps users, history, audit and the adapter registry; the upstream only turns prompts
into tokens. Adapters reach it in one of two ways when the registry loads them (activation,
or the first request that needs a version):

* **push** — a vLLM started with `--enable-lora` and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`
  accepts `POST /v1/load_lora_adapter {lora_name, lora_path}`; the adapter is then served under
  its engine name (`finance@3`). `lora_path` is the version's folder as the upstream sees it
  (`adapter_root` replaces the local store path when the two machines mount it differently).
* **map** — an upstream without that endpoint (another Teller, a vLLM serving a merged
  checkpoint) serves the adapter under a model id of its own: `model_map` names it, or the
  engine name is used as is (another Teller with the same adapters imported answers to it).

Adapters trained on Alpaca blocks are sent as a prompt to `/v1/completions`, built by the same
`app.contract` code the local engine and the trainer use; everything else goes to
`/v1/chat/completions`, where the upstream applies the model's chat template.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx

from app.contract import ALPACA_STOP_STRINGS, PromptFormat, alpaca_conversation_prompt
from app.engine.types import (
    EngineBusy,
    EngineError,
    EngineInfo,
    Event,
    FinishEvent,
    FinishReason,
    GenerationRequest,
    PrefillCounts,
    TokenEvent,
    UpstreamError,
)

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.1
CHARS_PER_TOKEN = 4
"""`count_tokens` estimate: the tokenizer lives upstream."""


@dataclass(frozen=True)
class RemoteAdapter:
    upstream_model: str
    prompt_format: PromptFormat
    pushed: bool


def parse_model_map(text: str) -> dict[str, str]:
    """`finance@3=finance-merged, tax=tax-v2` → {"finance@3": "finance-merged", "tax": "tax-v2"}.

    Raises:
        ValueError: an entry is not NAME=MODEL.
    """
    mapping: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, sep, model = entry.partition("=")
        if not sep or not name.strip() or not model.strip():
            raise ValueError(f"TELLER_REMOTE_MODEL_MAP entry {entry!r} is not NAME=MODEL")
        mapping[name.strip()] = model.strip()
    return mapping


def _base_url(url: str) -> str:
    return url.rstrip("/").removesuffix("/v1")


def _error_message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if data.get("message") or data.get("detail"):
            return str(data.get("message") or data.get("detail"))
    return response.text.strip()[:300]


def _retry_after(response: httpx.Response) -> int:
    try:
        return max(1, int(response.headers.get("retry-after", "5")))
    except ValueError:
        return 5


class RemoteEngine:
    """An `Engine` whose tokens come from `url` over HTTP (OpenAI chunked SSE)."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str = "",
        model: str = "",
        model_map: Mapping[str, str] | None = None,
        adapter_root: str = "",
        local_adapter_root: Path | None = None,
        timeout: float = 600.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = _base_url(url)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = httpx.Timeout(timeout, connect=10.0)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self.model = model or self.discover_model()
        self.model_map = dict(model_map or {})
        self.adapter_root = adapter_root
        self.local_adapter_root = local_adapter_root
        self._adapters: dict[str, RemoteAdapter] = {}
        self._can_push: bool | None = None
        """None until the first push tells whether the upstream loads adapters."""
        self.active_streams = 0
        self.queue_depth = 0
        """Requests wait upstream, not here."""
        self.prefills = PrefillCounts()
        """The upstream runs the prompts: none here."""

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            model=self.model,
            device=f"remote {self.url}",
            dtype="upstream",
            quantization="upstream",
            adapters=tuple(self._adapters),
        )

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.url,
                headers=self._headers,
                timeout=self._timeout,
                transport=self._transport,
            )
        return self._client

    # ---- models -------------------------------------------------------------------------

    def discover_model(self) -> str:
        """The upstream's base model: the first id of its `/v1/models` (vLLM and Teller both
        list the base first). Runs once, at start, from the factory's thread.

        Raises:
            UpstreamError: the upstream is unreachable or lists no model.
        """
        try:
            response = httpx.get(
                f"{self.url}/v1/models", headers=self._headers, timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"cannot reach the remote engine at {self.url}: {exc} "
                "(is it running? set TELLER_REMOTE_MODEL to start without asking it)"
            ) from None
        if response.status_code >= 400:
            raise UpstreamError(
                f"the remote engine at {self.url} refused GET /v1/models "
                f"({response.status_code}): {_error_message(response)}"
            )
        ids = [item.get("id") for item in response.json().get("data", [])]
        if not ids or not ids[0]:
            raise UpstreamError(f"the remote engine at {self.url} lists no models")
        return str(ids[0])

    async def upstream_models(self) -> list[str]:
        response = await self._request("GET", "/v1/models")
        return [str(item.get("id")) for item in response.json().get("data", [])]

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http().request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"cannot reach the remote engine at {self.url}: {exc}") from None
        if response.status_code in (429, 503):
            raise EngineBusy(retry_after=_retry_after(response))
        return response

    # ---- adapters (called by app.adapters.service) --------------------------------------

    def upstream_path(self, path: Path) -> str:
        """The adapter folder as the upstream sees it (same path unless `adapter_root` is set)."""
        if self.adapter_root and self.local_adapter_root is not None:
            with contextlib.suppress(ValueError):
                relative = path.resolve().relative_to(self.local_adapter_root.resolve())
                return f"{self.adapter_root.rstrip('/')}/{relative.as_posix()}"
        return str(path.resolve())

    async def load_adapter(self, name: str, path: Path, prompt_format: PromptFormat) -> None:
        """Make adapter version `name` (`finance@3`) servable upstream: mapped, or pushed.

        Raises:
            UpstreamError: the upstream refused the adapter, or serves no model for it.
        """
        mapped = self.model_map.get(name) or self.model_map.get(name.partition("@")[0])
        if mapped is None and self._can_push is not False and await self.push_adapter(name, path):
            self._adapters[name] = RemoteAdapter(name, prompt_format, pushed=True)
            return
        upstream = mapped or name
        if upstream not in await self.upstream_models():
            raise UpstreamError(
                f"the remote engine serves no model {upstream!r} for adapter {name}: load it "
                "there, or map it with TELLER_REMOTE_MODEL_MAP (NAME=MODEL)"
            )
        self._adapters[name] = RemoteAdapter(upstream, prompt_format, pushed=False)

    async def push_adapter(self, name: str, path: Path) -> bool:
        """vLLM's runtime LoRA loading; False when the upstream has no such endpoint.

        Raises:
            UpstreamError: the endpoint exists but refused this adapter.
        """
        body = {"lora_name": name, "lora_path": self.upstream_path(path)}
        response = await self._request("POST", "/v1/load_lora_adapter", json=body)
        if response.status_code in (404, 405):
            self._can_push = False
            log.info("%s has no load_lora_adapter endpoint: adapters are mapped", self.url)
            return False
        message = _error_message(response) if response.status_code >= 400 else ""
        if response.status_code >= 400 and "already" not in message.lower():
            raise UpstreamError(f"the remote engine refused adapter {name}: {message}")
        self._can_push = True
        log.info("pushed adapter %s to %s", name, self.url)
        return True

    async def unload_adapter(self, name: str) -> None:
        adapter = self._adapters.pop(name, None)
        if adapter is not None and adapter.pushed:
            try:
                await self._request("POST", "/v1/unload_lora_adapter", json={"lora_name": name})
            except EngineError:
                log.warning("could not unload adapter %s from %s", name, self.url)

    # ---- generation ---------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // CHARS_PER_TOKEN) if text else 0

    def _body(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        """The upstream endpoint and JSON body for a request."""
        if request.adapter and request.adapter not in self._adapters:
            raise EngineError(f"adapter {request.adapter!r} is not loaded")
        if request.constraint is not None:
            raise EngineError("structured output (tools, response_format) needs the local engine")
        adapter = self._adapters.get(request.adapter or "")
        params = request.sampling
        stop = list(params.stop)
        body: dict[str, Any] = {
            "model": adapter.upstream_model if adapter else self.model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if request.prompt is not None:
            path, body["prompt"] = "/v1/completions", request.prompt
        elif adapter is not None and adapter.prompt_format == PromptFormat.ALPACA:
            path = "/v1/completions"
            body["prompt"] = alpaca_conversation_prompt(
                request.messages, continue_final=request.continue_final
            )
            stop += [s for s in ALPACA_STOP_STRINGS if s not in stop]
        else:
            path = "/v1/chat/completions"
            body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
            if request.continue_final:  # vLLM's fields for continuing the last message
                body.update(continue_final_message=True, add_generation_prompt=False)
        if stop:
            body["stop"] = stop
        return path, body

    def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """Start reading the upstream's stream for `request`.

        Raises:
            EngineError: the request names an adapter that is not loaded (at once); busy
                (EngineBusy) and unreachable (UpstreamError) upstreams raise when iterated.
        """
        path, body = self._body(request)
        return self._stream(path, body, request)

    async def _stream(
        self, path: str, body: dict[str, Any], request: GenerationRequest
    ) -> AsyncIterator[Event]:
        self.active_streams += 1
        parts: list[str] = []
        usage: dict[str, Any] = {}
        reason: FinishReason = "stop"
        try:
            async with contextlib.AsyncExitStack() as stack:
                response = await self._open(stack, path, body)
                lines = self._lines(response, request)
                stack.push_async_callback(lines.aclose)  # type: ignore[attr-defined]  # a generator
                async for kind, payload in lines:
                    if kind == "cancelled":
                        reason = "cancelled"
                        break
                    if kind == "error":
                        yield FinishEvent(
                            "error", "".join(parts), 0, len(parts), error=payload,
                            failure=UpstreamError(payload),
                        )  # fmt: skip
                        return
                    text, finish, chunk_usage = payload
                    usage = chunk_usage or usage
                    if finish:
                        reason = "length" if finish == "length" else "stop"
                    if text:
                        parts.append(text)
                        yield TokenEvent(text)
            yield FinishEvent(
                reason,
                "".join(parts),
                int(usage.get("prompt_tokens") or 0),
                int(usage.get("completion_tokens") or len(parts)),
            )
        finally:
            request.cancel.set()
            self.active_streams -= 1

    async def _open(
        self, stack: contextlib.AsyncExitStack, path: str, body: dict[str, Any]
    ) -> httpx.Response:
        try:
            response = await stack.enter_async_context(self._http().stream("POST", path, json=body))
        except httpx.HTTPError as exc:
            raise UpstreamError(f"cannot reach the remote engine at {self.url}: {exc}") from None
        # Closing must finish even when the caller is being cancelled (client disconnect):
        # that close is what tells the upstream to stop generating.
        stack.push_async_callback(_close_shielded, response)
        if response.status_code in (429, 503):
            raise EngineBusy(retry_after=_retry_after(response))
        if response.status_code >= 400:
            await response.aread()
            raise UpstreamError(
                f"the remote engine refused the request ({response.status_code}): "
                f"{_error_message(response)}"
            )
        return response

    async def _lines(
        self, response: httpx.Response, request: GenerationRequest
    ) -> AsyncIterator[tuple[str, Any]]:
        """("token", (text, finish_reason, usage)), ("error", message) or ("cancelled", None),
        checking the cancel signal at least every CANCEL_POLL_S while the upstream is quiet."""
        lines = response.aiter_lines()
        pending: asyncio.Future[str | None] | None = None
        try:
            while True:
                if request.cancel.is_set():
                    yield "cancelled", None
                    return
                if pending is None:
                    pending = asyncio.ensure_future(anext(lines, None))
                done, _ = await asyncio.wait({pending}, timeout=CANCEL_POLL_S)
                if not done:
                    continue
                try:
                    line = pending.result()
                except httpx.HTTPError as exc:
                    yield "error", f"the remote engine stream broke: {exc}"
                    return
                pending = None
                if line is None:
                    return
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                parsed = _parse_chunk(data)
                yield parsed
                if parsed[0] == "error":
                    return
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _parse_chunk(data: str) -> tuple[str, Any]:
    try:
        chunk = json.loads(data)
    except ValueError:
        return "error", f"the remote engine sent a malformed chunk: {data[:100]!r}"
    if not isinstance(chunk, dict):
        return "error", "the remote engine sent a malformed chunk"
    if chunk.get("error"):
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else str(error)
        return "error", f"the remote engine failed: {message}"
    text, finish = "", None
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta")
        text += (
            (delta.get("content") or "") if isinstance(delta, dict) else (choice.get("text") or "")
        )
        finish = choice.get("finish_reason") or finish
    return "token", (text, finish, chunk.get("usage") or {})


async def _close_shielded(response: httpx.Response) -> None:
    with anyio.CancelScope(shield=True):
        await response.aclose()
