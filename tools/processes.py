"""A server's processes, read from /proc (Linux): who holds a port's listening socket, a process's parent
and children. `tools/soak.py` finds the server whose memory it samples this way, and the worker-death test
finds gunicorn's master and workers."""
from __future__ import annotations

import os

LISTEN = "0A"                                # /proc/net/tcp's state of a listening socket


def tcp_table() -> list[list[str]]:
    """The rows of /proc/net/tcp and tcp6 (fields: sl, local, remote, state, ..., inode at index 9)."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines)
                rows += [line.split() for line in lines]
        except OSError:
            pass
    return rows


def port_of(address: str) -> int:
    """The port of a /proc/net/tcp address ("0100007F:1F90")."""
    return int(address.rsplit(":", 1)[1], 16)


def holds(pid: int, sockets: set[str]) -> bool:
    """Whether `pid` has one of `sockets` ("socket:[inode]") open."""
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in sockets:
                    return True
            except OSError:
                continue
    except OSError:
        pass
    return False


def listening_pids(port: int) -> set[int]:
    """The processes holding the listening socket of `port` (gunicorn: the master and its workers)."""
    sockets = {f"socket:[{row[9]}]" for row in tcp_table() if row[3] == LISTEN and port_of(row[1]) == port}
    return {int(entry) for entry in os.listdir("/proc") if entry.isdigit() and holds(int(entry), sockets)}


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def children(pid: int) -> set[int]:
    found = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children") as text:
                    found |= {int(child) for child in text.read().split()}
            except OSError:
                pass
    except OSError:
        pass
    return found


def server_root(port: int) -> int | None:
    """The listener of `port` whose parent does not listen (gunicorn's master; the server itself otherwise)."""
    pids = listening_pids(port)
    roots = [pid for pid in pids if parent_of(pid) not in pids]
    return min(roots) if roots else None
