"""Dialling another node's feed endpoint: the client side of a node-to-node feed.

:class:`FeedDialer` is the :data:`voxgate.core.sfu.cluster.FeedDial` of a server: one
aiohttp session for every feed of the node, the cluster secret as a bearer token, the
wire format's subprotocol (:mod:`voxgate.core.sfu.feeds`). aiohttp's failures become
:class:`~voxgate.errors.SfuError` with the code a pulled track answers with; the other
node's address stays in the logs, never in what a client is told.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import quote

import aiohttp

from voxgate.channels import Channel
from voxgate.core.sfu.feeds import SUBPROTOCOL
from voxgate.errors import SfuError
from voxgate.transports.ws import AiohttpChannel

log = logging.getLogger("voxgate.sfu.feeds")

#: The largest frame a feed carries: an Opus packet is at most 1275 bytes per frame.
MAX_FRAME = 64 * 1024


def feed_path(app_id: str, sid: str, name: str) -> str:
    """The path of a track's feed on the node that publishes it."""
    return f"/v1/cluster/feeds/{quote(app_id, safe='')}/{quote(sid, safe='')}/" + quote(
        name, safe=""
    )


class FeedDialer:
    """Opens feeds to other nodes; :meth:`close` when the server stops."""

    def __init__(
        self, *, secret: str | None, timeout: float = 5.0, heartbeat: float = 10.0
    ) -> None:
        self._secret = secret
        self._timeout = timeout
        self._heartbeat = heartbeat
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, node: str, app_id: str, sid: str, name: str) -> Channel:
        """A channel of track ``name`` of session ``sid`` from ``node`` (a base URL).
        Raises SfuError: 404 ``not_found``, 503 ``cluster_secret_unset``, 502
        ``cluster_unauthorized`` or ``node_unreachable``."""
        if not self._secret:
            raise SfuError(
                503,
                "cluster_secret_unset",
                f"session {sid!r} is on another node, and this node has no cluster secret "
                "([cluster] secret_env) to pull tracks from other nodes",
            )
        if self._session is None:
            self._session = aiohttp.ClientSession()
        url = node.rstrip("/") + feed_path(app_id, sid, name)
        try:
            async with asyncio.timeout(self._timeout):
                ws = await self._session.ws_connect(
                    url,
                    headers={"Authorization": f"Bearer {self._secret}"},
                    protocols=(SUBPROTOCOL,),
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
                    autoclose=False,
                    autoping=True,
                    heartbeat=self._heartbeat,
                    max_msg_size=MAX_FRAME,
                    compress=0,
                )
        except aiohttp.WSServerHandshakeError as exc:
            raise _refused(exc.status, node, sid, name) from exc
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            log.warning(
                "feed %s/%s: node %s cannot be reached (%s: %s)",
                sid,
                name,
                node,
                type(exc).__name__,
                exc,
            )
            raise _unreachable(sid) from exc
        return AiohttpChannel(ws)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _unreachable(sid: str) -> SfuError:
    return SfuError(
        502, "node_unreachable", f"session {sid!r} is on another node, which cannot be reached"
    )


def _refused(status: int, node: str, sid: str, name: str) -> SfuError:
    if status == 404:
        return SfuError(404, "not_found", f"no track {name!r} in session {sid!r}")
    log.warning("feed %s/%s: node %s refused it (HTTP %d)", sid, name, node, status)
    if status == 401:
        return SfuError(
            502,
            "cluster_unauthorized",
            f"session {sid!r} is on another node, which refused this node's cluster secret",
        )
    if status == 403:
        return SfuError(
            502,
            "cluster_secret_unset",
            f"session {sid!r} is on another node, which has no cluster secret set",
        )
    return _unreachable(sid)
