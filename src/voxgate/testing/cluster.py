"""Several voxgate nodes as real processes on 127.0.0.1, for tests and ``bench cluster``.

:class:`Node` runs ``voxgate serve`` with a config file of its own and reads the address
it prints. The machine's Redis and PostgreSQL are found with :func:`redis_reason` and
:func:`postgres_reason` (``None`` when reachable, else why not, for a skip message);
:func:`fresh_database` makes an empty PostgreSQL database and drops it afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

#: How to start the machine's services when they are installed but stopped (the CI
#: machines' own commands).
REDIS_START = (
    "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' "
    "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
)
POSTGRES_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
POSTGRES_STOP = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main stop -m fast"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (another process could take it before use)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_reason(host: str = REDIS_HOST, port: int = REDIS_PORT) -> str | None:
    """``None`` when Redis answers PING at ``host:port``, else why not."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            answer = sock.recv(64)
    except OSError as exc:
        return f"redis not reachable at {host}:{port}: {exc}"
    if not answer.startswith(b"+PONG"):
        return f"redis at {host}:{port} answered {answer[:40]!r} to PING"
    return None


async def empty_redis(db: int, host: str = REDIS_HOST, port: int = REDIS_PORT) -> None:
    """FLUSHDB on Redis database ``db`` (a test's or a benchmark's own)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis(host=host, port=port, db=db, socket_connect_timeout=1)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


async def postgres_reason(dsn: str = POSTGRES_DSN) -> str | None:
    """``None`` when PostgreSQL accepts a connection at ``dsn``, else why not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        conn = await psycopg.AsyncConnection.connect(dsn, connect_timeout=2)
    except psycopg.Error as exc:
        return f"postgresql not reachable at {dsn}: {str(exc).strip()[:200]}"
    await conn.close()
    return None


@contextlib.asynccontextmanager
async def fresh_database(name: str, dsn: str = POSTGRES_DSN) -> AsyncIterator[str]:
    """An empty database ``name`` (dropped first if left over); yields its URL and
    drops it afterwards."""
    import psycopg

    async def run(sql: str) -> None:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=5)
        try:
            await conn.execute(sql.encode())  # composed from a checked name
        finally:
            await conn.close()

    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"not a plain database name: {name!r}")
    await run(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await run(f"CREATE DATABASE {name}")
    try:
        yield dsn.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with contextlib.suppress(Exception):
            await run(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def shell(command: str, *, within: float = 60.0) -> tuple[int, str]:
    """Run ``command`` with ``sh``; its exit status and output."""
    proc = await asyncio.create_subprocess_shell(
        command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), within)
    return proc.returncode or 0, out.decode(errors="replace")


@dataclass
class Node:
    """One ``voxgate serve`` process. Start with :meth:`start`; always :meth:`kill` or
    :meth:`stop` it (``async with`` does)."""

    name: str
    config: str
    workdir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    #: More ``[server]`` keys, as TOML lines (the table itself is written here).
    server: str = ""
    port: int = field(default_factory=free_port)
    proc: asyncio.subprocess.Process | None = None
    output: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def start(self, *, within: float = 60.0) -> Node:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / f"{self.name}.toml"
        cfg.write_text(
            f'[server]\nhost = "127.0.0.1"\nport = {self.port}\nnode = "{self.name}"\n'
            + self.server
            + "\n"
            + self.config
        )
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "voxgate",
            "serve",
            "--config",
            str(cfg),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.workdir,
            env={**os.environ, **self.env},
        )
        listening = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(listening))
        try:
            await asyncio.wait_for(asyncio.shield(listening), within)
        except (TimeoutError, EOFError):
            await self.kill()
            raise RuntimeError(
                f"node {self.name} did not start:\n" + "".join(self.output[-40:])
            ) from None
        return self

    async def _read(self, listening: asyncio.Future[None]) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        while line := (await self.proc.stdout.readline()).decode(errors="replace"):
            self.output.append(line)
            if "listening on" in line and not listening.done():
                listening.set_result(None)
        if not listening.done():
            listening.set_exception(EOFError())

    async def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def wait(self, within: float = 60.0) -> int:
        """Wait for the process to end; its exit status."""
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), within)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)
        return code

    async def stop(self, within: float = 60.0) -> int:
        """SIGTERM twice (drain, then at once); the exit status."""
        await self.signal(signal.SIGTERM)
        await asyncio.sleep(0.1)
        await self.signal(signal.SIGTERM)
        try:
            return await self.wait(within)
        except TimeoutError:
            await self.kill()
            raise

    async def kill(self) -> None:
        """``kill -9``: nothing of the node's own cleanup runs."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)

    async def __aenter__(self) -> Node:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.stop(within=30)
        await self.kill()
