"""The Responses API's store (refengine/agent/stored_responses.py): kept beside the sessions in one SQLite file,
gone after the TTL, the oldest dropped past the cap, deleted once."""
from refengine.agent.sessions import DATABASE_NAME, SessionStore
from refengine.agent.stored_responses import ResponseStore


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_put_get_delete_beside_the_sessions(tmp_path):
    sessions = SessionStore(tmp_path)
    store = ResponseStore(tmp_path)
    assert store.database == sessions.database == tmp_path / DATABASE_NAME
    store.put("resp_1", {"id": "resp_1", "output": []}, [{"role": "user", "content": "Hï"}])
    got = store.get("resp_1")
    assert got.response == {"id": "resp_1", "output": []} and got.messages == [{"role": "user", "content": "Hï"}]
    assert ResponseStore(tmp_path).get("resp_1") == got          # another worker's store sees it
    assert store.delete("resp_1") and store.get("resp_1") is None and not store.delete("resp_1")
    assert sessions.open("s").id == "s"                          # the sessions' table is untouched


def test_a_response_older_than_the_ttl_is_gone(tmp_path):
    clock = Clock()
    store = ResponseStore(tmp_path, ttl_s=60, clock=clock)
    store.put("old", {}, [])
    clock.now += 61
    assert store.get("old") is None and not store.delete("old")
    store.put("new", {}, [])
    assert store.get("new") is not None


def test_past_the_cap_the_oldest_go_first(tmp_path):
    clock = Clock()
    store = ResponseStore(tmp_path, max_responses=2, clock=clock)
    for name in ("a", "b", "c"):
        store.put(name, {"id": name}, [])
        clock.now += 1
    assert [store.get(name) is not None for name in ("a", "b", "c")] == [False, True, True]
