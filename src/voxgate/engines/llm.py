"""Language models behind the voice agent: ``voxgate/echo`` and OpenAI-compatible endpoints.

``LanguageModel.stream(request)`` yields :data:`~voxgate.protocols.chat.ChatEvent`
values and ends with one :class:`~voxgate.protocols.chat.ChatDone`; the caller cancels
the iteration to stop (barge-in, ``response.cancel``). Failures raise :class:`LLMError`.

A session's ``model`` is ``provider/model``: ``voxgate/local`` (a language model on
llama.cpp, :mod:`voxgate.engines.local_llm`) and ``voxgate/echo`` are embedded; any
``[llm.NAME]`` entry in the config is an OpenAI-compatible chat-completions endpoint;
``openai/…`` without an entry uses api.openai.com with the gateway's stored OpenAI key.
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import aiohttp
import orjson
from aiohttp.http_exceptions import LineTooLong

from voxgate.engines.base import EngineError, EngineUnavailable, UpstreamEngineError
from voxgate.protocols.chat import (
    ChatDone,
    ChatEvent,
    ChatProtocolError,
    ChatRequest,
    ChatStreamParser,
    TextDelta,
    ToolCallDelta,
    request_body,
)
from voxgate.settings import LLMSettings

OPENAI_BASE_URL = "https://api.openai.com/v1"


class LLMError(UpstreamEngineError):
    code = "llm_error"


class LanguageModel(ABC):
    #: ``provider/model`` as the session named it.
    name: str

    @abstractmethod
    def stream(self, request: ChatRequest) -> AsyncIterator[ChatEvent]:
        """The answer to ``request``, streamed; ends with :class:`ChatDone`."""

    async def warm(  # noqa: B027 - remote models: nothing
        self, request: ChatRequest, *, whole: bool = False
    ) -> None:
        """Prepare for a session whose requests start like ``request`` (its instructions
        and tools, its conversation, the words of a user still speaking): an embedded
        model evaluates them ahead of the turn. ``whole``: the user's last message is
        probably complete (it reads as a sentence): the turn's request is likely
        ``request`` itself, worth preparing to its end and sooner."""


def _words(text: str | None) -> int:
    return len((text or "").split())


class EchoModel(LanguageModel):
    """Answers with what it heard, so the whole voice loop runs with no model at all.

    The answer is ``You said: <the last user message>`` (or ``The function returned:
    <output>`` after a tool result). With ``tool_choice`` ``required`` or a named
    function it calls that function (the first tool for ``required``) with ``{}``.
    Tokens are counted as words.
    """

    name = "voxgate/echo"

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatEvent]:
        inp = sum(_words(m.content) for m in request.messages)
        last = request.messages[-1] if request.messages else None
        if (
            request.tools
            and (request.named or request.tool_choice == "required")
            and (last is None or last.role != "tool")
        ):
            name = request.tool_choice if request.named else request.tools[0].name
            # unique in the conversation, as a model's call ids are (clients key on them)
            yield ToolCallDelta(0, f"call_echo_{len(request.messages)}", name, "{}")
            yield ChatDone("tool_calls", inp, 1)
            return
        heard = ""
        for m in reversed(request.messages):
            if m.role == "tool":
                heard = f"The function returned: {m.content}"
                break
            if m.role == "user" and (m.content or "").strip():
                heard = f"You said: {m.content.strip() if m.content else ''}"
                break
        text = heard or "I did not hear anything."
        if not re.search(r"[.!?]$", text):
            text += "."
        words = text.split(" ")
        limit = request.max_tokens
        finish = "stop"
        if limit is not None and len(words) > limit:
            words, finish = words[:limit], "length"
        for i, word in enumerate(words):
            yield TextDelta(word if i == 0 else " " + word)
            await asyncio.sleep(0)  # a model streams: let other sessions run between tokens
        yield ChatDone(finish, inp, len(words))


#: The longest error body read from a failed request (for its message).
ERROR_BODY_BYTES = 4096


class OpenAIChatModel(LanguageModel):
    """A streamed ``POST {base_url}/chat/completions`` with a bearer key.

    Every failure is an :class:`LLMError` (code ``llm_error``): a refused or dropped
    connection, an HTTP error, a chunk the protocol does not allow (the message names
    the field), an event-stream line over aiohttp's line limit (128 KiB), and a wait
    longer than ``read_timeout`` for the answer's headers or its next bytes.
    """

    def __init__(
        self,
        name: str,
        model: str,
        *,
        base_url: str,
        api_key: str | None,
        http: aiohttp.ClientSession,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
    ) -> None:
        self.name = name
        self.model = model
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._http = http
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatEvent]:
        body = request_body(request)
        body["model"] = self.model
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        url = f"{self.base_url}/chat/completions"
        try:
            async with self._http.post(
                url, data=orjson.dumps(body), headers=headers, timeout=self._timeout
            ) as resp:
                if resp.status != 200:
                    detail = _error_message(await resp.content.read(ERROR_BODY_BYTES))
                    raise LLMError(
                        f"{self.name}: HTTP {resp.status}: {detail}",
                        retryable=resp.status in (429, 500, 502, 503, 504),
                    )
                parser = ChatStreamParser()
                async for line in _lines(resp.content):
                    for event in parser.feed(line):
                        yield event
                for event in parser.end():
                    yield event
        except ChatProtocolError as exc:
            raise LLMError(f"{self.name}: {exc.public_message}") from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise LLMError(
                f"{self.name}: cannot reach {url} within {self._timeout.sock_connect:g}s",
                retryable=True,
            ) from exc
        except TimeoutError as exc:
            raise LLMError(
                f"{self.name}: {url} sent nothing for {self._timeout.sock_read:g}s",
                retryable=True,
            ) from exc
        except aiohttp.ClientError as exc:
            raise LLMError(
                f"{self.name}: cannot reach {url}: {type(exc).__name__}", retryable=True
            ) from exc


async def _lines(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The lines of a response body. A line over aiohttp's limit (twice the reader's
    64 KiB buffer) is a protocol error: aiohttp 3.12+ raises ``LineTooLong``, older
    versions ``ValueError("Chunk too big")``."""
    while True:
        try:
            line = await content.readline()
        except (LineTooLong, ValueError):
            raise ChatProtocolError("the model sent an event-stream line over 128 KiB") from None
        if not line:
            return
        yield line


def _error_message(body: bytes) -> str:
    try:
        data = orjson.loads(body)
        return str(data["error"]["message"])[:200]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body[:200].decode(errors="replace")


class LocalEngine(Protocol):
    """The embedded model's engine (:class:`voxgate.engines.local_llm.LocalLLM`)."""

    def model(self) -> LanguageModel:
        """A session's handle on the engine; raises :class:`EngineUnavailable` (with
        what to install) when the extra or the model is missing."""
        ...


class UnknownModel(EngineError):
    code = "model_not_found"


class LLMRegistry:
    """Resolves ``provider/model`` names; owns the HTTP client the endpoints share."""

    def __init__(
        self,
        llms: Mapping[str, LLMSettings],
        *,
        local: LocalEngine | None = None,
        timeout: float = 60.0,
    ) -> None:
        self._llms = dict(llms)
        self._local = local
        self._timeout = timeout
        self._http: aiohttp.ClientSession | None = None

    def providers(self) -> list[str]:
        names = {"voxgate", "openai", *self._llms}
        return sorted(names)

    def resolve(self, model: str, *, openai_key: str | None = None) -> LanguageModel:
        """The model for ``model``; raises :class:`UnknownModel` naming what exists."""
        provider, sep, name = model.partition("/")
        if model == "voxgate/echo":
            return EchoModel()
        if model == "voxgate/local":
            if self._local is None:
                raise EngineUnavailable("voxgate/local is not configured on this server")
            return self._local.model()
        if not sep or not name:
            raise UnknownModel(
                f"model {model!r} is not provider/model (e.g. voxgate/local, voxgate/echo, "
                f"openai/gpt-4o-mini; providers: {', '.join(self.providers())})"
            )
        settings = self._llms.get(provider)
        if settings is not None:
            key = settings.api_key.value if settings.api_key is not None else None
            return OpenAIChatModel(
                model,
                name,
                base_url=settings.base_url,
                api_key=key,
                http=self.http(),
                connect_timeout=settings.connect_timeout_seconds,
                read_timeout=settings.read_timeout_seconds,
            )
        if provider == "openai":
            return OpenAIChatModel(
                model, name, base_url=OPENAI_BASE_URL, api_key=openai_key, http=self.http()
            )
        raise UnknownModel(
            f"unknown model provider {provider!r} in {model!r} "
            f"(providers: {', '.join(self.providers())}; declare others under [llm.NAME])"
        )

    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self._timeout)
            )
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
