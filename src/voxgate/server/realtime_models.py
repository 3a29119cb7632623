"""What a realtime session runs for the model name a client gives, and the name it echoes.

voxgate names models ``provider/model`` (``voxgate/echo``, ``openai/gpt-4o-mini``,
``ollama/llama3.2``); a realtime model of a relay provider (``openai/gpt-realtime``) makes
the session a relay. Clients written for OpenAI send bare names instead (``gpt-realtime``,
``gpt-4o-realtime-preview-2024-12-17``): those run ``[realtime] default_model`` — or, with
``openai_names = "relay"`` and an OpenAI key stored in the gateway, are relayed to OpenAI
as ``openai/<name>`` would be. No name at all runs ``default_model``. Either way the
session reports the name the client asked for. :func:`choose_model` is the one place
that decides; every route that takes a model (the WebSocket, client secrets, the beta
sessions, call agents) and ``session.update`` go through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from voxgate.settings import GatewaySettings, RealtimeSettings

#: Relay providers that speak the Realtime protocol themselves.
REALTIME_PROVIDERS = frozenset({"openai"})


def is_relayed_model(model: str, providers: Mapping[str, object]) -> bool:
    """``openai/gpt-realtime``, ``openai/gpt-4o-realtime-preview``: an upstream realtime model."""
    provider, _, name = model.partition("/")
    return provider in REALTIME_PROVIDERS and provider in providers and "realtime" in name


@dataclass(frozen=True)
class ModelChoice:
    #: What the session reports as ``session.model``: the name the client asked for.
    echo: str
    #: ``provider/model`` that runs: the agent's language model, or the upstream realtime
    #: model when :attr:`relay`. The usage record names this one.
    run: str
    relay: bool

    @property
    def provider(self) -> str:
        return self.run.partition("/")[0]


def choose_model(
    requested: str | None,
    *,
    realtime: RealtimeSettings,
    providers: Mapping[str, object],
    gateway: GatewaySettings,
) -> ModelChoice:
    """The model for ``requested`` (``None`` or ``""``: none named). It is not checked
    to exist here: resolving :attr:`ModelChoice.run` says so, naming the problem."""
    if not requested:
        requested = realtime.default_model
    run = requested
    if "/" not in requested:  # a bare OpenAI name
        as_openai = f"openai/{requested}"
        openai_key = "openai" in gateway.keys and gateway.keys["openai"].available
        relay = realtime.openai_names == "relay" and openai_key
        relay = relay and is_relayed_model(as_openai, providers)
        run = as_openai if relay else realtime.default_model
    return ModelChoice(requested, run, is_relayed_model(run, providers))
