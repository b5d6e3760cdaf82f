"""/metrics under `refengine serve --workers 2`: prometheus-client's multiprocess mode sums both workers, so
every scrape (whichever worker answers it) counts every request the replica served. The access log's pid
shows that both workers did serve some."""
from __future__ import annotations

import concurrent.futures
import http.client
import re
import time

from serving import free_port, refengine_serve, running_server

HANG_GUARD_S = 300
MAX_ROUNDS = 50                 # rounds of 8 concurrent requests before giving up on seeing both workers


def get(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path, headers={"Connection": "close"})     # a new connection: any worker
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def models_served(metrics_text: str) -> float:
    pattern = r'^refengine_requests_total\{endpoint="/v1/models",method="GET",status="200"\} (\S+)$'
    found = re.search(pattern, metrics_text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_metrics_count_requests_served_by_both_workers(tiny_model_dir, tmp_path):
    port, log = free_port(), tmp_path / "server.log"
    command = refengine_serve("--model", str(tiny_model_dir), "--port", str(port), "--workers", "2",
                              "--access-log", "--state-dir", str(tmp_path / "state"))
    with running_server(command, port, timeout=HANG_GUARD_S, log_path=log):
        # /health answers 200 from whichever worker loaded first; refengine_model_loaded is the minimum over
        # the live workers, so 1 means both have their model
        deadline = time.monotonic() + HANG_GUARD_S
        while not re.search(r"^refengine_model_loaded 1\.0$", get(port, "/metrics")[1], re.MULTILINE):
            assert time.monotonic() < deadline, "the workers did not both load the model"
            time.sleep(0.2)
        sent = 0
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for _ in range(MAX_ROUNDS):
                statuses = list(pool.map(lambda _: get(port, "/v1/models")[0], range(8)))
                assert statuses == [200] * 8
                sent += 8
                pids = set(re.findall(r'"GET /v1/models HTTP/1.1" 200 .* pid=<(\d+)>', log.read_text()))
                if len(pids) == 2:
                    break
        assert len(pids) == 2, f"after {sent} requests only one worker had served any: {pids}"
        for _ in range(6):                           # each scrape reaches either worker: all must agree
            status, text = get(port, "/metrics")
            assert status == 200
            assert models_served(text) == sent, text
            assert re.search(r"^refengine_model_loaded 1\.0$", text, re.MULTILINE)


def test_a_worker_marked_dead_twice_at_once_exits_cleanly(tmp_path, monkeypatch):
    """gunicorn calls worker_exit in the exiting worker and, for a worker gone when it signals it, in the
    master too: the two remove the same live-gauge files, and the one that loses the race must not print a
    traceback into the server's log (it once did, and failed this file's other test)."""
    import os
    import types

    import prometheus_client.multiprocess as multiprocess_module

    from web.metrics import MULTIPROCESS_DIR
    from web.serve import EngineServer
    monkeypatch.setenv(MULTIPROCESS_DIR, str(tmp_path))
    (tmp_path / "gauge_livesum_4242.db").write_bytes(b"")
    remove = os.remove

    def removed_by_the_other_first(path):
        remove(path)
        raise FileNotFoundError(path)
    monkeypatch.setattr(multiprocess_module.os, "remove", removed_by_the_other_first)
    server = EngineServer.__new__(EngineServer)          # the hook only: no gunicorn configuration
    server.slot = server.agent = None
    server.worker_exit(None, types.SimpleNamespace(pid=4242))
    assert not list(tmp_path.glob("*_4242.db"))
