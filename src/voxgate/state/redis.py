"""The Redis :class:`StateBackend` (``redis://HOST:PORT/DB``, ``rediss://…``): state that
several voxgate nodes share through one Redis server (or a Sentinel-managed primary).

Key layout (``prefix`` is ``voxgate:`` unless given)::

    {prefix}slot:{key}               sorted set: member = holder, score = lease expiry (ms)
    {prefix}sessions:{scope}         sorted set: member = session id, score = lease expiry
    {prefix}session:{scope}:{id}     string: the session's describe() bytes, PX lease
    {prefix}loc:{key}                string: a location, PX lease
    {prefix}secret:{value}           string: a secret's payload, PXAT its expiry

Expiry scores are the Redis server's clock (``TIME`` inside Lua), so the nodes' clocks
do not matter for leases; every sorted set also carries a key TTL of at least one lease,
so a key nobody renews goes away entirely. ``scope`` must not contain ``:`` (voxgate's
scopes are ``account/gateway`` with validated names), so session keys are unambiguous.
The session listing builds entry keys inside Lua: this needs one Redis, not a Cluster.

Leases: every slot, session and location this node puts is remembered here, and the task
:meth:`RedisState.start` begins writes all of them again every ``lease_seconds / 3`` with
a fresh expiry (:meth:`RedisState.renew`). Sorted-set members are re-added, not merely
refreshed, so after Redis lost its data the leases are back within one renewal; for the
same reason a lease that lapsed during a partition comes back even if its slot was taken
meanwhile (the key is over its limit until a holder lets go; no new holder gets in).
Secrets are not leases: they are written once with their expiry and are lost if Redis
loses its data (their holders then mint new ones).

Every operation is one round trip (the first use of a script after Redis started adds a
``SCRIPT LOAD``), and none scans the key space. Needs Redis 7.0 or later (PEXPIRETIME).

Failures: every redis-py error (:class:`redis.exceptions.RedisError`, :class:`OSError`,
:class:`TimeoutError`) becomes :class:`~voxgate.errors.StateUnavailable` whose
``public_message`` names the problem, never the URL or its password. Connections time out
after ``timeout_seconds`` (connect and read) and a command is retried once on a fresh
connection, so a dead server fails a handshake in about ``2 * timeout_seconds`` and a
connection left broken by a restart is replaced by the next command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    InvalidResponse,
    NoScriptError,
    RedisError,
    ResponseError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from voxgate.errors import ConfigError, StateUnavailable
from voxgate.state.base import DEFAULT_LEASE_SECONDS, Describe, StateBackend

log = logging.getLogger("voxgate.state")

#: What a failed exchange with Redis raises (``TimeoutError`` is an ``OSError``).
_FAILURES = (RedisError, OSError)

#: At most this many entries per renewal script, so one call never blocks Redis long.
_RENEW_CHUNK = 500

# The server's time in ms, as the first lines of every script that reads or writes leases.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1] slot set; ARGV: holder, limit, lease ms. 1 if holder holds a slot now, else 0.
_ACQUIRE = (
    _NOW
    + """
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1])
    or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
  return 1
end
return 0
"""
)

# KEYS[1] slot set: its members whose lease has not ended.
_COUNT = _NOW + "return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')\n"

# Writes leases: KEYS[1..n] sorted sets, KEYS[n+1..n+m] strings kept ``keep`` ms (session
# entries: they outlive their lease so that a lapsed session can be reaped), the other
# KEYS strings kept one lease; ARGV: lease ms, keep ms, n, m, then for each KEYS[i] its
# member (sorted set) or value (string) at ARGV[4 + i].
_LEASE = (
    _NOW
    + """
local lease = tonumber(ARGV[1])
local keep = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local m = tonumber(ARGV[4])
for i = 1, n do
  redis.call('ZADD', KEYS[i], now + lease, ARGV[4 + i])
  if redis.call('PTTL', KEYS[i]) < keep then redis.call('PEXPIRE', KEYS[i], keep) end
end
for i = n + 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[4 + i], 'PX', (i <= n + m) and keep or lease)
end
return #KEYS
"""
)

# KEYS[1] a scope's session set; ARGV[1] the prefix of its entries' keys. The live entries.
_LIST = (
    _NOW
    + """
local found = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
  local entry = redis.call('GET', ARGV[1] .. id)
  if entry then found[#found + 1] = entry end
end
return found
"""
)

# KEYS[1] a scope's session set; ARGV[1] the prefix of its entries' keys. The entries of
# sessions whose lease lapsed, each taken out as it is returned: one caller gets it.
_REAP = (
    _NOW
    + """
local found = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('ZREM', KEYS[1], id)
  local entry = redis.call('GET', ARGV[1] .. id)
  if entry then
    redis.call('DEL', ARGV[1] .. id)
    found[#found + 1] = entry
  end
end
return found
"""
)

# KEYS[1] a location; deleted only if it still says ARGV[1] (another node may own it now).
_UNSET = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _problem(exc: BaseException) -> str:
    """What went wrong, in words safe for a peer and for ``/readyz`` (no address)."""
    if isinstance(exc, AuthenticationError | AuthorizationError):
        return "redis refused our credentials"
    if isinstance(exc, BusyLoadingError):
        return "redis is loading its data"
    if isinstance(exc, InvalidResponse):
        return "the state server does not speak redis"
    if isinstance(exc, RedisTimeoutError | TimeoutError):
        return "redis did not answer in time"
    if isinstance(exc, RedisConnectionError | OSError):
        return "cannot connect to redis"
    if isinstance(exc, ResponseError):
        # the first word of an error reply is its code (OOM, READONLY, NOPERM, …)
        code = str(exc).split(" ", 1)[0]
        return f"redis answered {code}" if code.isalpha() and code.isupper() else "redis error"
    return f"redis error ({type(exc).__name__})"


#: A session entry is kept this many leases after its node last renewed it: time for a
#: live node to reap it (and write its record) once its lease has lapsed.
KEEP_LEASES = 3

#: Connections one node keeps to Redis, at most.
MAX_CONNECTIONS = 64


class RedisState(StateBackend):
    """Shared state in Redis at ``url``.

    Call :meth:`start` once the event loop runs (it begins the renewals) and :meth:`close`
    at shutdown; operations work before :meth:`start` but nothing renews their leases.
    """

    def __init__(
        self,
        url: str,
        *,
        node: str,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        prefix: str = "voxgate:",
        timeout_seconds: float = 1.0,
    ) -> None:
        super().__init__(node=node, lease_seconds=lease_seconds)
        try:
            parts = urlsplit(url)
            self._password = parts.password
            # scheme://host:port/db, without credentials: for logs
            self._where = f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"
            # at most MAX_CONNECTIONS to Redis whatever the burst of handshakes: past
            # that, a command waits (up to the timeout) for a connection to come back
            pool = BlockingConnectionPool.from_url(
                url,
                max_connections=MAX_CONNECTIONS,
                timeout=timeout_seconds,
                socket_connect_timeout=timeout_seconds,
                socket_timeout=timeout_seconds,
                # one immediate retry on a fresh connection: a pooled connection that a
                # restart of Redis broke must not fail the next handshake
                retry=Retry(NoBackoff(), 1),
            )
            self._redis = Redis.from_pool(pool)  # closing the client closes the pool
        except ValueError as exc:  # its text may quote the URL, password and all
            raise ConfigError(f"state.url: not a valid redis URL ({type(exc).__name__})") from exc
        self._prefix = prefix
        self._lease_ms = max(1, round(lease_seconds * 1000))
        self._keep_ms = self._lease_ms * KEEP_LEASES
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._count = self._redis.register_script(_COUNT)
        self._lease = self._redis.register_script(_LEASE)
        self._list = self._redis.register_script(_LIST)
        self._reap = self._redis.register_script(_REAP)
        self._unset = self._redis.register_script(_UNSET)
        # what this node holds, renewed by _renew_forever
        self._slots: set[tuple[str, str]] = set()
        self._sessions: dict[tuple[str, str], Describe] = {}
        self._described: dict[tuple[str, str], bytes] = {}
        self._locations: dict[str, str] = {}
        self._available = True
        self._reason: str | None = None
        self._renewal: asyncio.Task[None] | None = None
        self._closed = False

    # --- keys ---------------------------------------------------------------------------

    def _slot_key(self, key: str) -> str:
        return f"{self._prefix}slot:{key}"

    def _index_key(self, scope: str) -> str:
        return f"{self._prefix}sessions:{scope}"

    def _entry_prefix(self, scope: str) -> str:
        return f"{self._prefix}session:{scope}:"

    def _location_key(self, key: str) -> str:
        return f"{self._prefix}loc:{key}"

    def _secret_key(self, value: str) -> str:
        return f"{self._prefix}secret:{value}"

    # --- availability -------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._available

    @property
    def reason(self) -> str | None:
        return self._reason

    def _succeeded(self) -> None:
        if not self._available:
            log.info("state: %s answers again", self._where)
        self._available, self._reason = True, None

    def _failed(self, exc: BaseException, doing: str) -> StateUnavailable:
        """Note the failure (logged once per outage) and the error to raise for it."""
        problem = _problem(exc)
        detail = str(exc)
        if self._password:
            detail = detail.replace(self._password, "***")
        if self._available:
            log.warning("state: %s unavailable while %s: %s", self._where, doing, detail)
        self._available, self._reason = False, problem
        return StateUnavailable(
            f"state server {self._where} failed while {doing}: {detail}",
            public_message=f"shared state unavailable: {problem}",
        )

    @contextlib.contextmanager
    def _exchange(self, doing: str) -> Iterator[None]:
        """Around one exchange that must succeed: raises StateUnavailable."""
        if self._closed:
            raise StateUnavailable("state backend closed", public_message="shutting down")
        try:
            yield
        except _FAILURES as exc:
            raise self._failed(exc, doing) from exc
        self._succeeded()

    async def ping(self) -> bool:
        try:
            with self._exchange("pinging"):
                await self._redis.ping()
        except StateUnavailable:
            return False
        return True

    # --- lifetime -----------------------------------------------------------------------

    async def start(self) -> None:
        """Ask Redis once (a dead one only marks this backend unavailable) and begin the
        renewals. Call once; :meth:`close` stops them."""
        if self._renewal is not None or self._closed:
            raise RuntimeError("RedisState.start() called twice or after close()")
        await self.ping()
        self._renewal = asyncio.create_task(self._renew_forever(), name="voxgate-state-renew")

    async def close(self) -> None:
        """Stop renewing, delete this node's entries where Redis answers within about
        two timeouts, and close the connections. Later calls fail or do nothing."""
        if self._closed:
            return
        self._closed = True
        if self._renewal is not None:
            self._renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewal
        try:
            await self._delete_held()
        except _FAILURES as exc:
            log.warning("state: could not give back this node's leases (they lapse): %s", exc)
        await self._redis.aclose()

    async def _delete_held(self) -> None:
        if not (self._slots or self._sessions or self._locations):
            return
        pipe = self._redis.pipeline(transaction=False)
        for key, holder in self._slots:
            pipe.zrem(self._slot_key(key), holder)
        for scope, session_id in self._sessions:
            pipe.zrem(self._index_key(scope), session_id)
            pipe.delete(self._entry_prefix(scope) + session_id)
        for key, value in self._locations.items():
            pipe.eval(_UNSET, 1, self._location_key(key), value)
        self._slots.clear()
        self._sessions.clear()
        self._described.clear()
        self._locations.clear()
        await pipe.execute()

    async def _renew_forever(self) -> None:
        """Every ``lease_seconds / 3`` until :meth:`close`: :meth:`renew`, whatever happens.

        Ends on cancellation or, should a cancellation be lost, at the next tick: on
        Python 3.11 redis-py's ``asyncio.wait_for`` can swallow one that arrives as a
        send completes (seen in this module's tests), so ``close`` also sets ``_closed``.
        """
        while not self._closed:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self.renew()
            except StateUnavailable:
                pass  # noted by _failed; the next tick tries again
            except Exception:  # a bug must not end renewals: every lease would lapse
                log.exception("state: renewal failed")
                self._available, self._reason = False, "renewal failed"

    async def renew(self) -> None:
        """Write every lease this node holds again with a fresh expiry (what the renewal
        task does each tick; tests call it to renew now). Raises StateUnavailable."""
        slots = set(self._slots)
        locations = dict(self._locations)
        sessions = list(self._sessions.items())
        zsets = [(self._slot_key(k), h) for k, h in slots]
        kept: list[tuple[str, str | bytes]] = []
        for (scope, session_id), describe in sessions:
            zsets.append((self._index_key(scope), session_id))
            entry = self._describe(scope, session_id, describe)
            kept.append((self._entry_prefix(scope) + session_id, entry))
        strings: list[tuple[str, str | bytes]] = [
            (self._location_key(k), v) for k, v in locations.items()
        ]
        with self._exchange("renewing leases"):
            await self._write_leases(zsets, kept, strings)
            # What was let go while the renewal was on its way may have been written back.
            await self._let_go_again(slots, {s for s, _ in sessions}, locations)

    def _describe(self, scope: str, session_id: str, describe: Describe) -> bytes:
        """The session's entry now; its last one if ``describe`` fails (logged)."""
        try:
            entry = describe()
        except Exception:  # one session's bug must not stop the renewal of the others
            log.exception("state: describe() of session %s failed", session_id)
            return self._described.get((scope, session_id), b"{}")
        self._described[(scope, session_id)] = entry
        return entry

    async def _let_go_again(
        self, slots: set[tuple[str, str]], sessions: set[tuple[str, str]], locations: dict[str, str]
    ) -> None:
        slots = slots - self._slots
        sessions = sessions - self._sessions.keys()
        moved = {k: v for k, v in locations.items() if self._locations.get(k) != v}
        if not (slots or sessions or moved):
            return
        pipe = self._redis.pipeline(transaction=False)
        for key, holder in slots:
            pipe.zrem(self._slot_key(key), holder)
        for scope, session_id in sessions:
            pipe.zrem(self._index_key(scope), session_id)
            pipe.delete(self._entry_prefix(scope) + session_id)
        for key, value in moved.items():
            current = self._locations.get(key)
            if current is None:
                pipe.eval(_UNSET, 1, self._location_key(key), value)
            else:
                pipe.set(self._location_key(key), current, px=self._lease_ms)
        await pipe.execute()

    async def _write_leases(
        self,
        zsets: Sequence[tuple[str, str]],
        kept: Sequence[tuple[str, str | bytes]],
        strings: Sequence[tuple[str, str | bytes]] = (),
    ) -> None:
        """Lease ``zsets``' members and ``strings``' values, and write ``kept`` values (the
        session entries, kept ``KEEP_LEASES`` leases to be reaped): one round trip (a
        ``PING`` when there is nothing to write, so the renewal still checks the server)."""
        calls: list[tuple[int, list[str | bytes | int]]] = []
        for at in range(0, max(len(zsets), len(kept), len(strings)), _RENEW_CHUNK):
            z, k = zsets[at : at + _RENEW_CHUNK], kept[at : at + _RENEW_CHUNK]
            s = strings[at : at + _RENEW_CHUNK]
            keys = [key for key, _ in z] + [key for key, _ in k] + [key for key, _ in s]
            args: list[str | bytes | int] = [self._lease_ms, self._keep_ms, len(z), len(k)]
            args += [m for _, m in z] + [v for _, v in k] + [v for _, v in s]
            calls.append((len(keys), [*keys, *args]))
        for attempt in (1, 2):
            pipe = self._redis.pipeline(transaction=False)
            for numkeys, keys_and_args in calls:
                pipe.evalsha(self._lease.sha, numkeys, *keys_and_args)
            if not calls:
                pipe.ping()
            try:
                await pipe.execute()
                return
            except NoScriptError:  # Redis restarted: load the script, write everything again
                if attempt == 2:
                    raise
                await self._redis.script_load(_LEASE)

    # --- connection slots ---------------------------------------------------------------

    async def acquire_slot(self, key: str, holder: str, limit: int) -> bool:
        with self._exchange("taking a slot"):
            taken = await self._acquire(
                keys=[self._slot_key(key)], args=[holder, limit, self._lease_ms]
            )
        if taken:
            self._slots.add((key, holder))
        return bool(taken)

    async def release_slot(self, key: str, holder: str) -> None:
        self._slots.discard((key, holder))
        if self._closed:
            return
        try:
            with self._exchange("releasing a slot"):
                await self._redis.zrem(self._slot_key(key), holder)
        except StateUnavailable as exc:
            log.warning("state: slot %s of %s not released (it lapses): %s", key, holder, exc)

    async def slots_in_use(self, key: str) -> int:
        with self._exchange("counting slots"):
            count = await self._count(keys=[self._slot_key(key)])
        return int(count)

    # --- client secrets -----------------------------------------------------------------

    async def put_secret(self, value: str, payload: bytes, expires_at: float) -> None:
        with self._exchange("storing a secret"):
            await self._redis.set(
                self._secret_key(value), payload, pxat=max(1, round(expires_at * 1000))
            )

    async def get_secret(self, value: str, *, now: float) -> bytes | None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(self._secret_key(value))
        pipe.pexpiretime(self._secret_key(value))
        with self._exchange("reading a secret"):
            payload, expires_ms = await pipe.execute()
        # both sides in ms, rounded alike: at `expires_at` itself it is over
        if payload is None or 0 <= expires_ms <= round(now * 1000):
            return None
        return bytes(payload)

    # --- live sessions ------------------------------------------------------------------

    async def put_session(self, scope: str, session_id: str, describe: Describe) -> None:
        entry = describe()
        # held before it is written, so that a remove_session meanwhile wins
        self._sessions[(scope, session_id)] = describe
        self._described[(scope, session_id)] = entry
        try:
            with self._exchange("listing a session"):
                await self._write_leases(
                    [(self._index_key(scope), session_id)],
                    [(self._entry_prefix(scope) + session_id, entry)],
                )
        except BaseException:  # not held: what was written lapses
            self._sessions.pop((scope, session_id), None)
            self._described.pop((scope, session_id), None)
            raise

    async def remove_session(self, scope: str, session_id: str) -> None:
        """Unlist the session; never raises (an entry left behind lapses)."""
        self._sessions.pop((scope, session_id), None)
        self._described.pop((scope, session_id), None)
        if self._closed:
            return
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrem(self._index_key(scope), session_id)
        pipe.delete(self._entry_prefix(scope) + session_id)
        try:
            with self._exchange("removing a session"):
                await pipe.execute()
        except StateUnavailable as exc:
            log.warning("state: session %s not unlisted (it lapses): %s", session_id, exc)

    async def reap_sessions(self, scope: str) -> list[bytes]:
        with self._exchange("reaping sessions"):
            found = await self._reap(
                keys=[self._index_key(scope)], args=[self._entry_prefix(scope)]
            )
        return [bytes(entry) for entry in found]

    async def list_sessions(self, scope: str) -> list[bytes]:
        with self._exchange("listing sessions"):
            found = await self._list(
                keys=[self._index_key(scope)], args=[self._entry_prefix(scope)]
            )
        return [bytes(entry) for entry in found]

    # --- directory ----------------------------------------------------------------------

    async def put_location(self, key: str, value: str) -> None:
        self._locations[key] = value  # held before it is written: see put_session
        try:
            with self._exchange("storing a location"):
                await self._redis.set(self._location_key(key), value, px=self._lease_ms)
        except BaseException:
            if self._locations.get(key) == value:
                del self._locations[key]
            raise

    async def remove_location(self, key: str) -> None:
        """Forget the location if it is still ours; never raises (else it lapses)."""
        value = self._locations.pop(key, None)
        if value is None or self._closed:
            return
        try:
            with self._exchange("removing a location"):
                await self._unset(keys=[self._location_key(key)], args=[value])
        except StateUnavailable as exc:
            log.warning("state: location %s not removed (it lapses): %s", key, exc)

    async def get_location(self, key: str) -> str | None:
        with self._exchange("reading a location"):
            value = await self._redis.get(self._location_key(key))
        return value.decode() if isinstance(value, bytes) else value
