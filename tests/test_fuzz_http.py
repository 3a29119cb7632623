"""A seeded fuzz of the HTTP endpoints that are not sessions — logs, dashboard, client
secrets, operations, the page — beside the canary: hostile paths, query strings, headers
and bodies. Every answer is below 500 and an error names its problem in a JSON body,
nothing logs a traceback, and the canary's round trips stay under 50 ms at the 99th
percentile. (The media server's HTTP API has its own fuzz, ``test_sfu_fuzz``.)"""

from __future__ import annotations

import asyncio
import json
import os
import random
from typing import Any

import aiohttp
import pytest

from conftest import GatewayFactory, assert_healthy, canary_url
from hostile import Mutator, paths, replaced
from voxgate.testing.canary import Canary

pytestmark = pytest.mark.timeout(180)

SEED = int(os.environ.get("FUZZ_SEED", "20261129"))
TOKEN = "fuzz-token-0123456789"
CONFIG = """
[accounts.local.gateways.default]
tokens = [{ name = "fuzz", env = "FUZZ_TOKEN" }]
limits.messages_per_minute = 100000
"""
SECRET_BODY: dict[str, Any] = {
    "expires_after": {"anchor": "created_at", "seconds": 600},
    "session": {
        "type": "realtime",
        "model": "voxgate/echo",
        "instructions": "Be brief.",
        "audio": {"output": {"voice": "alloy"}},
    },
}
PATHS = [
    "/v1/local/default/logs",
    "/v1/local/default/logs/sess_nope",
    "/v1/local/default/sessions",
    "/v1/local/default/config",
    "/v1/nobody/nothing/logs",
    "/v1",
    "/",
    "/ui/js/app.js",
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/cluster/feeds/default/nope/mic",
    "/v1/cluster/feeds/default/%00/%FF",
]
QUERIES = [
    "limit=-1",
    "limit=0",
    "limit=1001",
    "limit=1e3",
    "limit=abc",
    "limit=" + "9" * 40,
    "since=abc",
    "since=nan",
    "since=inf",
    "since=-inf",
    "since=1e400",
    "since=9999-12-31T23:59:59-23:59",
    "since=0001-01-01T00:00:00+23:59",
    "since=2026-13-45",
    "since=" + "1" * 400,
    "since=%00",
    "limit=%FF%FE",
    "a=" + "b" * 5000,
]


def _request(r: random.Random, mutator: Mutator) -> tuple[str, str, dict[str, str], bytes | None]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    roll = r.random()
    if roll < 0.1:
        headers["Authorization"] = r.choice(
            ["Bearer", "Bearer " + "x" * 5000, "Basic %%%", "Bearer ek_nope", "\u00e9"]
        )
    if roll < 0.45:
        path = r.choice(PATHS)
        if r.random() < 0.3:
            path += r.choice(["/..", "/%2e%2e/x", "/" + "a" * 300, "//", "/%00", "?" + "&" * 50])
        query = "&".join(r.choice(QUERIES) for _ in range(r.randint(0, 2)))
        return "GET", path + ("?" + query if query and "?" not in path else ""), headers, None
    path = r.choice(["/v1/realtime/client_secrets", "/v1/realtime/sessions"])
    if r.random() < 0.2:
        body = r.choice([b"", b"{", b"[]", b"null", b"\xff\xfe", b"{" * 5000, os.urandom(64)])
    else:
        base = SECRET_BODY if path.endswith("client_secrets") else SECRET_BODY["session"]
        mutated = base
        for _ in range(r.randint(1, 3)):
            where = r.choice(paths(base))
            try:
                mutated = replaced(mutated, where, mutator.value())
            except (KeyError, IndexError, TypeError):
                continue
        body = json.dumps(mutated).encode()
        for i, deep in enumerate(mutator._deep):
            body = body.replace(f'"__deep_{i}__"'.encode(), deep.encode())
        mutator._deep.clear()
    headers["Content-Type"] = r.choice(["application/json", "text/plain", "x/y"])
    return "POST", path, headers, body


async def test_http_endpoints_fuzz_beside_the_canary(
    gateway: GatewayFactory, http: aiohttp.ClientSession, canary: Canary, tracebacks: Any
) -> None:
    gw = await gateway(canary.provider_toml() + CONFIG, {"FUZZ_TOKEN": TOKEN})
    await canary.begin(canary_url(gw), interval=0.005, token=TOKEN)
    r = random.Random(SEED)
    mutator = Mutator(SEED)
    statuses: dict[int, int] = {}
    bad: list[tuple[str, str, int, str]] = []
    for _ in range(1500):
        method, path, headers, body = _request(r, mutator)
        async with http.request(method, gw.base + path, headers=headers, data=body) as resp:
            text = await resp.text(errors="replace")
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
            problem = resp.status >= 500
            if resp.status >= 400 and resp.content_type == "application/json":
                answer = json.loads(text)
                error = answer.get("error") or {}
                named = bool(error.get("code") and error.get("message"))
                # the media server's and the node-to-node routes answer in Cloudflare's shape
                named = named or bool(answer.get("errorCode") and answer.get("errorDescription"))
                problem = problem or not named
            if problem:
                bad.append((method, path[:120], resp.status, text[:200]))
        await asyncio.sleep(0.001)
    result = await canary.finish()
    print("statuses", dict(sorted(statuses.items())))
    assert bad == [], bad[:5]
    assert tracebacks() == []
    assert_healthy(result)
