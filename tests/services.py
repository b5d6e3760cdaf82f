"""Real PostgreSQL and Redis for tests: private instances in temporary folders on free loopback ports, torn down
afterwards. PostgreSQL refuses to run as root, so under root it runs as `nobody` (runuser); a machine without
the Debian packages skips with the reason.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from serving import free_port

START_TIMEOUT_S = 120                     # a hang guard: a loaded machine may take long to start a server


def postgres_bin(name: str) -> str:
    """Debian keeps the server's programs off PATH, under /usr/lib/postgresql/<version>/bin: the newest."""
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    found = str(versions[-1]) if versions else shutil.which(name)
    if not found:
        pytest.skip(f"PostgreSQL's {name} is not installed (Debian package postgresql; .ci/run installs it)")
    return str(found)


def as_server_user(command: list[str]) -> list[str]:
    """Root runs PostgreSQL as nobody (it refuses root); anyone else as themselves."""
    if os.geteuid() != 0:
        return command
    if not shutil.which("runuser"):
        pytest.skip("running as root without runuser: PostgreSQL cannot be started as another user")
    return ["runuser", "-u", "nobody", "--", *command]


@contextmanager
def postgres_server() -> Iterator[str]:
    """A fresh cluster (trust authentication on loopback only); yields a postgresql:// URL of a database."""
    initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
    folder = Path(tempfile.mkdtemp(prefix="refengine-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "nobody")
    data, port = folder / "data", free_port()
    try:
        subprocess.run(as_server_user([initdb, "-D", str(data), "-U", "refengine", "--auth=trust", "-E", "UTF8",
                                       "--no-sync"]), check=True, capture_output=True, timeout=START_TIMEOUT_S)
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off"
        subprocess.run(as_server_user([pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w",
                                       "-t", str(START_TIMEOUT_S), "start"]),
                       check=True, capture_output=True, timeout=START_TIMEOUT_S + 10)
        try:
            yield f"postgresql://refengine@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(as_server_user([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]),
                           capture_output=True, timeout=START_TIMEOUT_S)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server with a generated config (no persistence, loopback only); yields a redis:// URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian package redis-server; .ci/run installs it)")
    import redis
    folder, port = Path(tempfile.mkdtemp(prefix="refengine-redis-")), free_port()
    (folder / "redis.conf").write_text(f"bind 127.0.0.1\nport {port}\ndir {folder}\nsave \"\"\nappendonly no\n"
                                       "protected-mode yes\n")
    process = subprocess.Popen([binary, str(folder / "redis.conf")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not start (exit {process.poll()})")
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url
