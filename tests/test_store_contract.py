"""The store contract (refengine/agent/stores): sessions, stored responses, produced files and approvals behave
the same on SQLite (always), a real PostgreSQL and a real Redis (private instances on loopback, tests/services.py).
"Two replicas" are two stores opened on the same database with different state folders, as two servers on two
machines would: what one writes the other reads, and an approval decided on one releases a wait on the other.
"""
from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import psycopg
import pytest
import redis

from refengine.agent.stores.base import open_store, store_kind
from services import postgres_url, redis_url  # noqa: F401 - fixtures

KINDS = ("sqlite", "postgresql", "redis")
HANG_GUARD_S = 60                        # only bounds a broken wait; nothing here waits for it to pass


class Clock:
    """Moved by hand, so expiry never depends on how fast the test runs."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=KINDS)
def backend(request, tmp_path):
    """A fresh, empty database of the kind; returns `open(state_dir_name, **options)` opening a store on it."""
    kind = request.param
    if kind == "sqlite":
        shared = tmp_path / "shared-state"                  # SQLite: replicas are workers sharing one folder
        yield kind, lambda name="a", **options: open_store(None, shared, **options)
        return
    if kind == "postgresql":
        base = request.getfixturevalue("postgres_url")
        database = "t_" + uuid.uuid4().hex
        with psycopg.connect(base, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{database}"')
        url = base.rsplit("/", 1)[0] + "/" + database
    else:
        url = request.getfixturevalue("redis_url")
        redis.Redis.from_url(url).flushdb()
    yield kind, lambda name="a", **options: open_store(url, tmp_path / name, **options)


def test_store_kinds_from_urls():
    assert store_kind(None) == "sqlite"
    assert store_kind("postgresql://u@h/db") == store_kind("postgres://h/db") == "postgres"
    assert store_kind("redis://h:6379/0") == "redis"
    with pytest.raises(ValueError, match="postgresql://, redis://"):
        store_kind("mysql://h/db")


def test_sessions_round_trip_and_continue_on_another_replica(backend):
    kind, open_ = backend
    clock = Clock()
    a, b = open_("a", clock=clock), open_("b", clock=clock)
    session = a.sessions.open(None)
    assert session.messages == [] and session.folder.is_dir()
    turn = [{"role": "user", "content": "Hi ✓"}, {"role": "assistant", "content": "Hello"}]
    a.sessions.append(session.id, turn)
    assert b.sessions.get(session.id).messages == turn                       # the other replica sees it
    b.sessions.open(session.id)
    b.sessions.append(session.id, [{"role": "user", "content": "again"}])
    assert [m["content"] for m in a.sessions.get(session.id).messages] == ["Hi ✓", "Hello", "again"]
    assert [info.message_count for info in a.sessions.list()] == [3]
    b.sessions.replace(session.id, [{"role": "user", "content": "reset"}])
    assert a.sessions.get(session.id).messages == [{"role": "user", "content": "reset"}]
    with pytest.raises(KeyError):
        a.sessions.append("never-opened", turn)
    assert a.sessions.delete(session.id) is True
    assert b.sessions.get(session.id) is None and b.sessions.delete(session.id) is False


def test_concurrent_appends_from_two_replicas_lose_nothing(backend):
    kind, open_ = backend
    a, b = open_("a"), open_("b")
    session_id = a.sessions.open("shared").id
    errors = []

    def append_many(store, tag):
        try:
            for i in range(15):
                store.sessions.append(session_id, [{"role": "user", "content": f"{tag}{i}"}])
        except Exception as error:            # noqa: BLE001 - reported by the assertion below
            errors.append(error)
    threads = [threading.Thread(target=append_many, args=(store, tag)) for store, tag in ((a, "a"), (b, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG_GUARD_S)
    assert errors == []
    contents = [m["content"] for m in a.sessions.get(session_id).messages]
    assert sorted(contents) == sorted([f"a{i}" for i in range(15)] + [f"b{i}" for i in range(15)])


def test_ttl_and_lru_cap(backend):
    kind, open_ = backend
    clock = Clock()
    store = open_(clock=clock, ttl_s=100, max_items=2)
    for name in ("one", "two"):
        store.sessions.open(name)
        clock.now += 1
    store.sessions.open("one")                                 # "two" is now the least recently used
    clock.now += 1
    store.sessions.open("three")
    assert [info.id for info in store.sessions.list()] == ["three", "one"]
    clock.now += 101
    assert store.sessions.get("one") is None and store.sessions.list() == []
    assert sorted(store.sessions.expire()) == ["one", "three"]
    assert store.sessions.open("one").messages == []           # an expired id reopens empty


def test_removed_sessions_call_on_remove_and_lose_their_folder(backend):
    kind, open_ = backend
    removed = []
    store = open_(on_remove=removed.append)
    session = store.sessions.open("gone")
    (session.folder / "x.txt").write_text("x")
    store.sessions.delete("gone")
    assert removed == ["gone"] and not session.folder.exists()


def test_stored_responses_from_either_replica(backend):
    kind, open_ = backend
    clock = Clock()
    a, b = open_("a", clock=clock, ttl_s=50, max_items=2), open_("b", clock=clock, ttl_s=50, max_items=2)
    a.responses.put("resp_1", {"id": "resp_1", "output_text": "ü"}, [{"role": "user", "content": "q"}])
    stored = b.responses.get("resp_1")
    assert stored.response == {"id": "resp_1", "output_text": "ü"} and stored.messages[0]["content"] == "q"
    clock.now += 1
    b.responses.put("resp_2", {"id": "resp_2"}, [])
    clock.now += 1
    a.responses.put("resp_3", {"id": "resp_3"}, [])           # past the cap of 2: the oldest goes
    assert a.responses.get("resp_1") is None and b.responses.get("resp_2") is not None
    assert b.responses.delete("resp_2") is True and a.responses.get("resp_2") is None
    assert a.responses.delete("resp_2") is False
    clock.now += 51
    assert b.responses.get("resp_3") is None and a.responses.delete("resp_3") is False


def test_files_round_trip_and_go_with_their_session(backend):
    kind, open_ = backend
    a, b = open_("a"), open_("b")
    session = a.sessions.open("files")
    text = a.files.record(session.id, "report.csv", b"a,b\n1,2\n")
    binary = a.files.record(session.id, "plot.png", b"\x89PNG\xff")
    assert text.text == "a,b\n1,2\n" and binary.data_base64 and binary.content_url.endswith("/content")
    file, content = b.files.get(binary.id)
    assert content == b"\x89PNG\xff" and file.mime_type == "image/png"
    assert [f.name for f in b.files.for_session(session.id)] == ["report.csv", "plot.png"]
    with pytest.raises(KeyError):
        a.files.record("no-such-session", "x.txt", b"x")
    (session.folder / "made.txt").write_text("made")
    collected = a.files.collect(session.id, session.folder, ["made.txt", "absent.txt"])
    assert collected[0].text == "made" and collected[1].error["code"] == "not_produced"
    b.sessions.delete(session.id)
    assert a.files.get(text.id) is None and a.files.for_session(session.id) == []


def test_large_files_are_not_inlined(backend):
    kind, open_ = backend
    store = open_()
    store.files.inline_cap = 4
    session = store.sessions.open("large")
    big = store.files.record(session.id, "big.txt", b"0123456789")
    assert big.text is None and big.data_base64 is None and big.bytes == 10
    listed, = store.files.for_session(session.id)
    assert listed.text is None and listed.content_url == big.content_url
    assert store.files.get(big.id)[1] == b"0123456789"


def test_an_approval_posted_to_another_replica_releases_the_wait(backend):
    kind, open_ = backend
    a, b = open_("a"), open_("b")
    approval_id = a.broker.open("s1", 1, "execute_python", '{"code": "1"}')
    assert b.broker.describe(approval_id) == {"approval_id": approval_id, "session_id": "s1", "round": 1,
                                              "tool": "execute_python", "arguments": '{"code": "1"}',
                                              "decided": False}
    decided = []
    waiter = threading.Thread(target=lambda: decided.append(a.broker.wait(approval_id, HANG_GUARD_S)))
    waiter.start()
    assert b.broker.decide(approval_id, "approve", remember_for_session=True) is True
    waiter.join(HANG_GUARD_S)
    assert decided == ["approve"]
    assert b.broker.decide(approval_id, "deny") is False                    # closed: a late click changes nothing
    assert a.broker.describe(approval_id) is None
    assert a.broker.remembered("s1", "execute_python") == "approve"         # remembered on the other replica
    assert a.broker.remembered("s2", "execute_python") is None and a.broker.remembered(None, "x") is None
    b.broker.forget_session("s1")
    assert a.broker.remembered("s1", "execute_python") is None


def test_a_decision_before_the_wait_counts_and_a_second_is_refused(backend):
    kind, open_ = backend
    a, b = open_("a"), open_("b")
    approval_id = a.broker.open(None, 2, "alpha", "{}")
    assert b.broker.decide(approval_id, "deny", remember_for_session=True) is True
    assert b.broker.decide(approval_id, "approve") is False
    assert a.broker.wait(approval_id, HANG_GUARD_S) == "deny"
    with pytest.raises(ValueError):
        a.broker.decide(approval_id, "maybe")


def test_unanswered_withdrawn_and_abandoned_approvals_deny(backend):
    kind, open_ = backend
    a, b = open_("a"), open_("b")
    assert a.broker.wait(a.broker.open("s1", 1, "alpha", "{}"), 0) == "deny"      # no decision in time
    assert a.broker.wait("appr_unknown", HANG_GUARD_S) == "deny"
    withdrawn = a.broker.open("s1", 1, "alpha", "{}")
    a.broker.withdraw(withdrawn)
    assert b.broker.decide(withdrawn, "approve") is False
    abandoned = a.broker.open("s9", 1, "alpha", "{}")
    other = a.broker.open("s8", 1, "alpha", "{}")
    b.broker.deny_waiting("s9")                                # its client went away
    assert a.broker.wait(abandoned, HANG_GUARD_S) == "deny"
    assert b.broker.decide(abandoned, "approve") is False and b.broker.decide(other, "approve") is True


def test_postgres_schema_is_migrated_once_and_versioned(postgres_url, tmp_path):
    database = "t_" + uuid.uuid4().hex
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{database}"')
    url = postgres_url.rsplit("/", 1)[0] + "/" + database
    threads = [threading.Thread(target=open_store, args=(url, tmp_path / str(i))) for i in range(3)]
    for thread in threads:                                     # replicas starting together
        thread.start()
    for thread in threads:
        thread.join(HANG_GUARD_S)
    open_store(url, tmp_path / "later")
    with psycopg.connect(url) as connection:
        assert connection.execute("SELECT version FROM refengine_schema").fetchall() == [(1,)]


def test_redis_keys_carry_native_ttls(redis_url, tmp_path):
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    store = open_store(redis_url, tmp_path, ttl_s=100)
    session = store.sessions.open("ttl")
    store.responses.put("resp_ttl", {}, [])
    approval_id = store.broker.open(session.id, 1, "alpha", "{}")
    for key in ("refengine:session:ttl", "refengine:response:resp_ttl", f"refengine:approval:{approval_id}"):
        assert 0 < client.ttl(key), key
    assert json.loads(client.hget("refengine:session:ttl", "messages")) == []


def test_files_dir_keeps_bodies_in_a_folder(backend, tmp_path):
    from refengine.agent.stores.files_dir import FolderFiles
    kind, open_ = backend
    store = open_()
    files = FolderFiles(store.files, tmp_path / "bodies")
    session = store.sessions.open("with-files-dir")
    recorded = files.record(session.id, "report.csv", b"a,b\n1,2\n")
    assert recorded.text == "a,b\n1,2\n" and recorded.bytes == 8
    assert store.files.get(recorded.id)[1] == b""                        # the store keeps no body
    file, content = files.get(recorded.id)
    assert content == b"a,b\n1,2\n" and file.bytes == 8
    files.inline_cap = 4
    big = files.record(session.id, "big.bin", b"0123456789")
    listed = files.for_session(session.id)
    assert [f.name for f in listed] == ["report.csv", "big.bin"]
    assert listed[1].bytes == 10 and listed[1].data_base64 is None and files.get(big.id)[1] == b"0123456789"
    (session.folder / "made.txt").write_text("made")
    made, = files.collect(session.id, session.folder, ["made.txt"])
    assert files.get(made.id)[1] == b"made"
    with pytest.raises(KeyError):
        files.record("no-such-session", "x.txt", b"x")
    files.remove_session(session.id)
    store.sessions.delete(session.id)
    assert files.get(recorded.id) is None and not any((tmp_path / "bodies").iterdir())


def test_the_runtime_puts_bodies_in_files_dir_and_removes_them_with_the_session(tmp_path):
    from refengine.agent.runtime import AgentRuntime, AgentSettings
    runtime = AgentRuntime(AgentSettings(state_dir=tmp_path / "state", files_dir=tmp_path / "bodies"))
    try:
        session = runtime.sessions.open(None)
        (session.folder / "out.txt").write_text("hello")
        produced, = runtime.files.collect(session.id, session.folder, ["out.txt"])
        assert produced.text == "hello" and runtime.files.get(produced.id)[1] == b"hello"
        assert any((tmp_path / "bodies").iterdir())
        assert runtime.sessions.delete(session.id) is True
        assert runtime.files.get(produced.id) is None and not any((tmp_path / "bodies").iterdir())
    finally:
        runtime.close()
