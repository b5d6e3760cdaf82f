"""Sessions and output files (refengine/agent/sessions.py, files.py, web/sessions.py) on real SQLite files in a
temporary state folder: round trips, WAL and sharing between stores (as gunicorn workers share them, a second
process included), TTL expiry on an injected clock, the LRU cap, ids that try to climb out of the state folder,
produced / binary / missing / large / hostile output files, and every endpoint through Falcon's TestClient."""
from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import falcon
import pytest
from falcon import testing

from refengine.agent.files import NOT_PRODUCED, TOO_LARGE, FileStore, requested_files
from refengine.agent.runtime import AgentRuntime, AgentSettings
from refengine.agent.sessions import DATABASE_NAME, SessionError, SessionStore
from web.errors import handle_unexpected, serialize_error
from web.sessions import add_session_routes

ROOT = Path(__file__).resolve().parent.parent
TOOL_TURN = [
    {"role": "user", "content": "What is 2**10?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
        "name": "execute_python", "arguments": json.dumps({"code": "print(2**10)"})}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"status": "success", "stdout": "1024\n"})},
    {"role": "assistant", "content": "2**10 is 1024."},
]
PNG_BYTES = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\x00"


class Clock:
    """A clock the test moves by hand, so expiry never depends on how fast the test runs."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def state_dir(tmp_path):
    return tmp_path / "state"


@pytest.fixture
def store(state_dir, clock):
    return SessionStore(state_dir, ttl_s=1800, max_sessions=1000, clock=clock)


@pytest.fixture
def files(store):
    return FileStore(store)


def session_app(store: SessionStore, files: FileStore) -> falcon.App:
    """The session routes on an app configured as web.app.create_app configures its own."""
    app = falcon.App()
    app.req_options.strip_url_path_trailing_slash = True
    app.set_error_serializer(serialize_error)
    app.add_error_handler(Exception, handle_unexpected)
    add_session_routes(app, store, files)
    return app


@pytest.fixture
def client(store, files):
    return testing.TestClient(session_app(store, files))


def assert_error(result, status: int, param: str | None, code: str | None = None) -> dict:
    assert result.status_code == status, result.text
    error = result.json["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


# ---- the store ----

def test_round_trip_with_tool_calls_and_results(store, clock):
    session = store.open(None)
    assert len(session.id) == 32 and int(session.id, 16) >= 0          # uuid4 hex
    assert session.messages == [] and session.folder.is_dir()
    assert session.folder.parent == store.state_dir / "sessions"

    clock.advance(5)
    store.append(session.id, TOOL_TURN[:2])
    store.append(session.id, TOOL_TURN[2:])
    stored = store.get(session.id)
    assert stored.messages == TOOL_TURN
    assert stored.created_at == session.created_at and stored.last_used_at == session.created_at + 5
    assert store.list()[0].id == session.id and store.list()[0].message_count == 4

    reopened = store.open(session.id)                                  # a known id continues
    assert reopened.messages == TOOL_TURN and reopened.created_at == session.created_at

    replaced = store.replace(session.id, [{"role": "user", "content": "fresh start"}])
    assert replaced.messages == [{"role": "user", "content": "fresh start"}]
    assert store.list()[0].message_count == 1

    (session.folder / "sub").mkdir()
    (session.folder / "sub" / "data.txt").write_text("x")
    assert store.delete(session.id) is True
    assert store.get(session.id) is None and not session.folder.exists() and store.list() == []
    assert store.delete(session.id) is False


def test_client_chosen_ids_and_bad_ids(store):
    assert store.open("my-session").id == "my-session"
    assert store.open("Ünïcode id with spaces").messages == []
    for bad in ("", "x" * 129, "line\nbreak", "nul\x00", 42, None):
        with pytest.raises(SessionError) as raised:
            store.get(bad)
        assert raised.value.param == "session_id" and isinstance(raised.value, ValueError)
    assert store.open("y" * 128).id == "y" * 128
    with pytest.raises(KeyError):
        store.append("never-opened", [{"role": "user", "content": "hi"}])


def test_wal_mode_and_schema(store, state_dir):
    connection = sqlite3.connect(state_dir / DATABASE_NAME)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        connection.close()
    assert "sessions" in tables


def test_two_stores_on_one_folder_see_each_others_writes(state_dir, clock):
    """Two workers' stores: each write is visible to the other at once, deletes included."""
    first = SessionStore(state_dir, clock=clock)
    second = SessionStore(state_dir, clock=clock)
    session = first.open("shared")
    first.append("shared", TOOL_TURN[:1])
    assert second.get("shared").messages == TOOL_TURN[:1]
    second.append("shared", TOOL_TURN[1:])
    assert first.get("shared").messages == TOOL_TURN
    assert first.folder("shared") == second.folder("shared") == session.folder
    assert second.delete("shared") and first.get("shared") is None


def test_a_second_process_writes_and_reads_the_same_file(store, state_dir, clock):
    """Real gunicorn workers are processes: one in a child process appends, this one reads, and back."""
    store.open("cross-process")
    store.append("cross-process", [{"role": "user", "content": "from the parent"}])
    child = (
        "import sys; from pathlib import Path; from refengine.agent.sessions import SessionStore\n"
        "store = SessionStore(Path(sys.argv[1]), clock=lambda: float(sys.argv[2]))\n"
        "assert store.get('cross-process').messages[0]['content'] == 'from the parent'\n"
        "store.append('cross-process', [{'role': 'assistant', 'content': 'from the child'}])\n")
    subprocess.run([sys.executable, "-c", child, str(state_dir), str(clock.now)], check=True, cwd=ROOT,
                   timeout=120)
    assert [m["content"] for m in store.get("cross-process").messages] == ["from the parent", "from the child"]


def test_concurrent_appends_lose_nothing(state_dir, clock):
    """Appends from threads on two stores interleave freely; every message is kept (each append is one
    write transaction). Correctness only: nothing here depends on timing."""
    stores = [SessionStore(state_dir, clock=clock), SessionStore(state_dir, clock=clock)]
    stores[0].open("busy")

    def writer(store: SessionStore, name: str) -> None:
        for i in range(15):
            store.append("busy", [{"role": "user", "content": f"{name}-{i}"}])

    threads = [threading.Thread(target=writer, args=(stores[k % 2], f"w{k}")) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    contents = [m["content"] for m in stores[1].get("busy").messages]
    assert sorted(contents) == sorted(f"w{k}-{i}" for k in range(4) for i in range(15))
    for k in range(4):                                 # each writer's own messages stay in its order
        assert [c for c in contents if c.startswith(f"w{k}-")] == [f"w{k}-{i}" for i in range(15)]


def test_idle_sessions_expire_after_the_ttl(store, clock):
    old = store.open("old")
    (old.folder / "state.pkl").write_bytes(b"kept until expiry")
    clock.advance(1000)
    store.open("recent")
    clock.advance(800)                                 # "old" idle exactly the TTL: still alive
    assert store.get("old") is not None
    clock.advance(1)                                   # idle longer than the TTL: gone to readers at once
    assert store.get("old") is None
    assert [info.id for info in store.list()] == ["recent"]
    assert old.folder.exists()                         # removed by the next open (or expire)
    store.open("newcomer")
    assert not old.folder.exists()
    assert {info.id for info in store.list()} == {"recent", "newcomer"}
    clock.advance(1801)
    assert sorted(store.expire()) == ["newcomer", "recent"] and store.list() == []


def test_an_expired_id_reopens_as_a_fresh_session(store, clock):
    session = store.open("again")
    store.append("again", TOOL_TURN)
    (session.folder / "leftover.txt").write_text("from the expired session")
    clock.advance(1801)
    fresh = store.open("again")
    assert fresh.messages == [] and fresh.created_at == clock.now
    assert fresh.folder.is_dir() and list(fresh.folder.iterdir()) == []


def test_the_cap_evicts_the_least_recently_used(state_dir, clock):
    """The clock does not move: the order of use alone decides who goes."""
    store = SessionStore(state_dir, max_sessions=3, clock=clock)
    folders = {name: store.open(name).folder for name in ("a", "b", "c")}
    store.append("a", [{"role": "user", "content": "a is used again"}])
    store.open("c")
    store.open("d")                                    # one too many: b is the least recently used
    assert [info.id for info in store.list()] == ["d", "c", "a"]
    assert store.get("b") is None and not folders["b"].exists()
    assert folders["a"].is_dir() and folders["c"].is_dir()
    store.open("e")
    assert [info.id for info in store.list()] == ["e", "d", "c"] and not folders["a"].exists()


def test_ids_with_path_parts_never_escape_the_state_folder(tmp_path, clock):
    state_dir = tmp_path / "state"
    bystander = tmp_path / "bystander"
    bystander.mkdir()
    (bystander / "precious.txt").write_text("do not touch")
    store = SessionStore(state_dir, clock=clock)
    for session_id in ("../bystander", "../../etc/passwd", "/tmp", "a/../../b", "..", ".", "sessions/../..",
                       "C:\\Windows"):
        session = store.open(session_id)
        folder = session.folder.resolve()
        assert folder.parent == (state_dir / "sessions").resolve()
        assert len(folder.name) == 64 and set(folder.name) <= set("0123456789abcdef")
        (session.folder / "out.txt").write_text(session_id)
        assert store.delete(session_id)
    assert (bystander / "precious.txt").read_text() == "do not touch"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bystander", "state"]
    assert list((state_dir / "sessions").iterdir()) == []


def test_sandbox_locked_folders_are_still_removed(store):
    """Code in the sandbox may leave folders without permissions; deleting the session removes them."""
    session = store.open("locked")
    locked = session.folder / "locked" / "deeper"
    locked.mkdir(parents=True)
    (locked / "file.bin").write_bytes(b"x")
    locked.chmod(0)
    (session.folder / "locked").chmod(0o500)
    assert store.delete("locked") and not session.folder.exists()


# ---- output files ----

def test_produced_text_file(store, files):
    session = store.open("files")
    (session.folder / "report.csv").write_text("city,temp\nOslo,4\n")
    [produced] = files.collect("files", session.folder, ["report.csv"])
    body = produced.as_json()
    assert body["id"].startswith("file-") and body["name"] == "report.csv" and body["format"] == "csv"
    assert body["mime_type"] == "text/csv" and body["bytes"] == len("city,temp\nOslo,4\n")
    assert body["text"] == "city,temp\nOslo,4\n" and "data_base64" not in body and "error" not in body
    assert body["content_url"] == f"/v1/files/{produced.id}/content"
    stored, content = files.get(produced.id)
    assert content == b"city,temp\nOslo,4\n" and stored == produced


def test_binary_files_are_base64(store, files):
    session = store.open("files")
    (session.folder / "plot.png").write_bytes(PNG_BYTES)
    (session.folder / "notes.txt").write_bytes(b"not utf-8: \xff\xfe")      # textual format, binary bytes
    (session.folder / "table").write_bytes(b"plain text, but no format")
    plot, notes, table = files.collect("files", session.folder,
                                       [{"name": "plot.png"}, {"name": "notes.txt", "format": "TXT"}, "table"])
    assert plot.mime_type == "image/png" and base64.b64decode(plot.as_json()["data_base64"]) == PNG_BYTES
    assert "text" not in plot.as_json()
    assert notes.format == "txt" and notes.text is None
    assert base64.b64decode(notes.data_base64) == b"not utf-8: \xff\xfe"
    assert table.format == "bin" and table.mime_type == "application/octet-stream" and table.data_base64


def test_missing_file_placeholder(store, files, clock):
    session = store.open("files")
    (session.folder / "made.json").write_text('{"ok": true}')
    made, missing = files.collect("files", session.folder, ["made.json", {"name": "summary.md",
                                                                          "description": "a summary"}])
    assert made.text == '{"ok": true}' and made.mime_type == "application/json"
    body = missing.as_json()
    assert body["error"]["code"] == NOT_PRODUCED and "summary.md" in body["error"]["message"]
    assert body["bytes"] == 0 and body["mime_type"] == "text/markdown" and body["created_at"] == int(clock.now)
    assert not {"text", "data_base64", "content_url"} & set(body)
    assert files.get(missing.id) is None                       # nothing to serve: not stored
    assert [f.id for f in files.for_session("files")] == [made.id]
    direct = files.missing("files", "never.csv")
    assert direct.error["code"] == NOT_PRODUCED and direct.format == "csv"


def test_large_file_is_served_by_content_url_only(store, files, client):
    session = store.open("files")
    big = ("0123456789abcdef" * 20_000).encode()               # 320,000 bytes: over the 256 KiB inline cap
    (session.folder / "big.txt").write_bytes(big)
    [large] = files.collect("files", session.folder, ["big.txt"])
    body = large.as_json()
    assert body["bytes"] == len(big) and body["content_url"] == f"/v1/files/{large.id}/content"
    assert not {"text", "data_base64", "error"} & set(body)
    exported = client.simulate_get("/v1/sessions/files").json["files"]
    assert exported == [body]
    served = client.simulate_get(body["content_url"])
    assert served.status_code == 200 and served.content == big
    assert served.headers["content-type"].startswith("text/plain")


def test_hostile_outputs_are_not_produced_files(store, tmp_path, clock):
    """Links (to a secret outside the folder), folders, and files past the size limit are not read."""
    files = FileStore(store, max_file_bytes=100)
    secret = tmp_path / "secret.txt"
    secret.write_text("server secret")
    session = store.open("hostile")
    (session.folder / "link.txt").symlink_to(secret)
    (session.folder / "dir.csv").mkdir()
    (session.folder / "huge.bin").write_bytes(b"x" * 101)
    link, folder, huge = files.collect("hostile", session.folder, ["link.txt", "dir.csv", "huge.bin"])
    assert link.error["code"] == NOT_PRODUCED and "link" in link.error["message"]
    assert "server secret" not in json.dumps(link.as_json())
    assert folder.error["code"] == NOT_PRODUCED
    assert huge.error["code"] == TOO_LARGE
    assert files.for_session("hostile") == []


def test_requested_names_are_plain_file_names(store, files):
    session = store.open("names")
    for i, bad in enumerate(["../escape.txt", "sub/file.txt", "..", "", "a\\b", "tab\there"]):
        with pytest.raises(SessionError) as raised:
            files.collect("names", session.folder, [f"ok{i}.txt", bad])
        assert raised.value.param == "files[1].name"
    with pytest.raises(SessionError) as raised:
        requested_files(["same.csv", {"name": "same.csv"}])
    assert raised.value.param == "files[1].name"
    with pytest.raises(SessionError) as raised:
        requested_files([{"name": "x.csv", "format": "../csv"}])
    assert raised.value.param == "files[0].format"
    with pytest.raises(SessionError) as raised:
        requested_files([{"name": "x.csv", "path": "/etc"}])
    assert raised.value.param == "files[0].path"
    with pytest.raises(SessionError) as raised:
        requested_files("report.csv")
    assert raised.value.param == "files"
    assert requested_files(["a.CSV", {"name": "b", "format": "png", "description": "a plot"}]) == [
        {"name": "a.CSV", "format": "csv"}, {"name": "b", "format": "png", "description": "a plot"}]


def test_files_go_with_their_session(store, files, clock):
    session = store.open("short-lived")
    kept = files.record("short-lived", "a.txt", b"a")
    assert files.get(kept.id)[1] == b"a"
    assert store.delete("short-lived") and files.get(kept.id) is None
    with pytest.raises(KeyError):
        files.record("no-such-session", "a.txt", b"a")
    store.open("expiring")
    doomed = files.record("expiring", "b.txt", b"b", "txt")
    clock.advance(1801)
    store.expire()
    assert files.get(doomed.id) is None and session.folder.exists() is False


# ---- HTTP ----

def test_list_export_and_delete_over_http(store, files, client, clock):
    assert client.simulate_get("/v1/sessions").json == {"object": "list", "data": []}
    first = store.open("first")
    store.append("first", TOOL_TURN)
    (first.folder / "out.txt").write_text("hello")
    [produced] = files.collect("first", first.folder, ["out.txt"])
    clock.advance(10)
    store.open("second")

    listing = client.simulate_get("/v1/sessions/").json          # a trailing slash is the same path
    assert listing["object"] == "list"
    assert listing["data"] == [
        {"id": "second", "object": "session", "created": int(clock.now), "last_used": int(clock.now),
         "message_count": 0},
        {"id": "first", "object": "session", "created": int(clock.now - 10), "last_used": int(clock.now - 10),
         "message_count": 4}]

    exported = client.simulate_get("/v1/sessions/first")
    assert exported.status_code == 200
    assert exported.json == {"id": "first", "object": "session", "created": int(clock.now - 10),
                             "last_used": int(clock.now - 10), "messages": TOOL_TURN,
                             "files": [produced.as_json()]}
    assert store.list()[0].id == "second"                        # exporting is not using

    content = client.simulate_get(f"/v1/files/{produced.id}/content")
    assert content.status_code == 200 and content.content == b"hello"
    assert content.headers["content-type"].startswith("text/plain")
    assert "attachment" in content.headers["content-disposition"] and "out.txt" in content.headers[
        "content-disposition"]
    assert content.headers["x-content-type-options"] == "nosniff"

    deleted = client.simulate_delete("/v1/sessions/first")
    assert deleted.status_code == 200
    assert deleted.json == {"id": "first", "object": "session.deleted", "deleted": True}
    assert_error(client.simulate_get("/v1/sessions/first"), 404, "session_id", "not_found")
    assert_error(client.simulate_delete("/v1/sessions/first"), 404, "session_id", "not_found")
    assert_error(client.simulate_get(f"/v1/files/{produced.id}/content"), 404, "file_id", "not_found")
    assert [s["id"] for s in client.simulate_get("/v1/sessions").json["data"]] == ["second"]


def test_unknown_ids_are_404s(client):
    assert_error(client.simulate_get("/v1/sessions/nobody"), 404, "session_id", "not_found")
    assert_error(client.simulate_delete("/v1/sessions/nobody"), 404, "session_id", "not_found")
    assert_error(client.simulate_get("/v1/files/file-0123/content"), 404, "file_id", "not_found")


def test_malformed_ids_are_400s(client):
    assert_error(client.simulate_get("/v1/sessions/" + "x" * 129), 400, "session_id")
    assert_error(client.simulate_put("/v1/sessions/" + "x" * 129, json={"messages": []}), 400, "session_id")
    assert_error(client.simulate_delete("/v1/sessions/tab%09id"), 400, "session_id")


def test_import_replaces_and_creates(store, client):
    imported = client.simulate_put("/v1/sessions/imported", json={"messages": TOOL_TURN})
    assert imported.status_code == 200, imported.text
    assert imported.json["id"] == "imported" and imported.json["object"] == "session"
    assert imported.json["messages"] == TOOL_TURN and imported.json["files"] == []
    assert store.get("imported").messages == TOOL_TURN and store.folder("imported").is_dir()

    replaced = client.simulate_put("/v1/sessions/imported", json={"messages": TOOL_TURN[:1]})
    assert replaced.json["messages"] == TOOL_TURN[:1]
    assert client.simulate_get("/v1/sessions").json["data"][0]["message_count"] == 1
    assert client.simulate_put("/v1/sessions/imported", json={"messages": []}).json["messages"] == []

    nested = client.simulate_put("/v1/sessions/team/alpha", json={"messages": TOOL_TURN[:1]})   # ids may hold '/'
    assert nested.status_code == 200 and nested.json["id"] == "team/alpha"
    assert client.simulate_get("/v1/sessions/team/alpha").json["messages"] == TOOL_TURN[:1]


@pytest.mark.parametrize("body, param", [
    ({}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({"messages": {"role": "user", "content": "hi"}}, "messages"),
    ({"messages": None}, "messages"),
    ({"messages": [1]}, "messages[0]"),
    ({"messages": [{"content": "no role"}]}, "messages[0].role"),
    ({"messages": [{"role": 7, "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "ok"}, {"role": "user"}]}, "messages[1].content"),
    ({"messages": [{"role": "tool", "content": "result"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "assistant"}]}, "messages[0].content"),
])
def test_bad_imports_are_400s_naming_messages(client, store, body, param):
    result = client.simulate_put("/v1/sessions/bad", json=body)
    error = assert_error(result, 400, param)
    assert error["param"].startswith("messages")
    assert store.get("bad") is None                             # nothing created by a refused import


def test_unparseable_import_body(client):
    result = client.simulate_put("/v1/sessions/bad", body=b"{not json", headers={"Content-Type": "application/json"})
    assert_error(result, 400, None)


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing (.ci/run installs it)")
def test_a_deleted_session_stops_its_interpreter_and_follows_no_link(tmp_path):
    """The interpreter goes before its folder (no code writes while the folder is removed, and a new session
    of the same id starts clean), and a link left in the folder is never followed while removing it."""
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o755)
    (outside / "keep.txt").write_text("host file")
    runtime = AgentRuntime(AgentSettings(state_dir=tmp_path / "state"))
    try:
        session = runtime.sessions.open("reused").id
        assert runtime.code_service(session).run("secret = 41")["status"] == "success"
        os.symlink(outside, runtime.sessions.folder(session) / "link")
        assert runtime.sessions.delete(session)
        assert (outside / "keep.txt").read_text() == "host file" and stat.S_IMODE(outside.stat().st_mode) == 0o755
        assert not runtime.sessions.folder(session).exists()
        runtime.sessions.open("reused")
        again = runtime.code_service("reused").run("secret + 1")
        assert again["status"] == "error" and "NameError" in again["exception"]
    finally:
        runtime.close()
