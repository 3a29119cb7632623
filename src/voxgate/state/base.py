"""The :class:`StateBackend` interface: what several voxgate nodes share.

Four things live here, each keyed by strings the server composes:

- **connection slots**: ``limit`` holders at most per key (a gateway, a token);
- **client secrets** (``ek_…``): an opaque payload until it expires;
- **live sessions** per scope (``account/gateway``), for the sessions API of every node,
  and, once a dead node's lease on one lapses, for one other node to write its record;
- **locations**: a small directory (which node holds an SFU session).

Everything a node puts, except secrets, is a *lease* held by that node: the backend
renews its own leases every ``lease_seconds / 3`` (:meth:`StateBackend.start` begins
that), so the entries of a node that died lapse within ``lease_seconds`` instead of
leaking forever. A renewal writes the whole entry again, so a state server that lost
its data (Redis restarted with nothing on disk) has every live node's leases back
within one renewal.

Failures: an operation that must succeed for a new session to begin (taking a slot,
minting a secret, reading one) raises :class:`~voxgate.errors.StateUnavailable`
(HTTP 503 ``state_unavailable``). Letting go (release, remove) never raises: what
could not be removed lapses with its lease. :attr:`StateBackend.available` and
:attr:`StateBackend.reason` say how the last exchange with the state server went,
for ``/readyz``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

#: Renders a live session's registry entry (JSON bytes) as it is now; called again at
#: each renewal, so other nodes see figures at most one renewal old.
Describe = Callable[[], bytes]

DEFAULT_LEASE_SECONDS = 30.0


class StateBackend(ABC):
    """Shared state for one node (``node``: its name, unique in the cluster)."""

    def __init__(self, *, node: str, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        self.node = node
        self.lease_seconds = lease_seconds

    # --- lifetime -----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and begin renewing this node's leases. A backend whose server is
        down still starts: it reports itself unavailable and recovers on its own."""
        return None

    async def close(self) -> None:
        """Stop renewing and give back this node's leases where the server answers;
        the backend is unusable afterwards."""
        return None

    @property
    def available(self) -> bool:
        """Whether the last exchange with the state server succeeded."""
        return True

    @property
    def reason(self) -> str | None:
        """Why the backend is unavailable (no secrets, no addresses); ``None`` if it is."""
        return None

    async def ping(self) -> bool:
        """Ask the state server now; updates :attr:`available`."""
        return True

    # --- connection slots ---------------------------------------------------------------

    @abstractmethod
    async def acquire_slot(self, key: str, holder: str, limit: int) -> bool:
        """Take one of ``limit`` slots under ``key`` for ``holder`` (atomically across
        nodes), held as a lease until :meth:`release_slot`; False if all are taken.
        Taking a slot ``holder`` already holds succeeds. Raises StateUnavailable."""

    @abstractmethod
    async def release_slot(self, key: str, holder: str) -> None:
        """Give back ``holder``'s slot. Releasing a slot not held does nothing."""

    @abstractmethod
    async def slots_in_use(self, key: str) -> int:
        """Live slots under ``key`` on every node. Raises StateUnavailable."""

    # --- client secrets -----------------------------------------------------------------

    @abstractmethod
    async def put_secret(self, value: str, payload: bytes, expires_at: float) -> None:
        """Keep ``payload`` under ``value`` until the Unix time ``expires_at``.
        Raises StateUnavailable."""

    @abstractmethod
    async def get_secret(self, value: str, *, now: float) -> bytes | None:
        """The payload of a live secret, ``None`` when unknown or expired at ``now``.
        Raises StateUnavailable."""

    # --- live sessions ------------------------------------------------------------------

    @abstractmethod
    async def put_session(self, scope: str, session_id: str, describe: Describe) -> None:
        """List a live session of this node under ``scope`` until :meth:`remove_session`.
        Raises StateUnavailable."""

    @abstractmethod
    async def remove_session(self, scope: str, session_id: str) -> None: ...

    async def reap_sessions(self, scope: str) -> list[bytes]:
        """The entries of sessions under ``scope`` whose node stopped renewing them (it
        died): each is handed to exactly one caller, once, so that one node writes its
        usage record. In one process there is nothing to reap: a session goes with its
        node. Raises StateUnavailable."""
        return []

    @abstractmethod
    async def list_sessions(self, scope: str) -> list[bytes]:
        """The entries of every node's live sessions under ``scope``, in no order.
        Raises StateUnavailable."""

    # --- directory ----------------------------------------------------------------------

    @abstractmethod
    async def put_location(self, key: str, value: str) -> None:
        """Say where ``key`` lives (held as this node's lease). Raises StateUnavailable."""

    @abstractmethod
    async def remove_location(self, key: str) -> None: ...

    @abstractmethod
    async def get_location(self, key: str) -> str | None:
        """What :meth:`put_location` said for ``key``, on any node. Raises StateUnavailable."""
