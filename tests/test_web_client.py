"""Noticing a client that hung up (web/client.py), on a real socket pair."""
import socket
import threading

import falcon
from falcon import testing

from web.client import HangupWatch, hung_up, watch_hangup


def test_hung_up_only_after_the_peer_closes():
    server_side, client_side = socket.socketpair()
    with server_side:
        assert not hung_up(server_side)                      # connected and quiet
        client_side.sendall(b"GET / HTTP/1.1\r\n")           # a pipelined request is not a hang-up
        assert not hung_up(server_side)
        assert server_side.recv(100) == b"GET / HTTP/1.1\r\n"
        client_side.close()
        assert hung_up(server_side)


def test_watch_calls_back_once_on_hangup_and_never_after_the_block():
    calls = []
    called = threading.Event()
    server_side, client_side = socket.socketpair()
    with server_side:
        with HangupWatch(server_side, lambda: (calls.append(1), called.set()), poll_s=0.01):
            client_side.close()
            assert called.wait(5)
        assert calls == [1]
    finished = []
    other_server, other_client = socket.socketpair()
    with other_server, other_client:
        with HangupWatch(other_server, lambda: finished.append(1), poll_s=0.01):
            pass
        other_client.close()
        threading.Event().wait(0.1)
        assert finished == []
    with HangupWatch(None, lambda: finished.append(1)):      # no socket (in-process client): no watch
        pass
    assert finished == []


def test_watch_hangup_uses_gunicorns_socket_and_watches_nothing_without_one():
    calls = []
    called = threading.Event()
    request = testing.create_req()                           # any WSGI server's request: no gunicorn.socket
    with watch_hangup(request, lambda: calls.append("plain")) as watch:
        assert watch.connection is None
    with watch_hangup(request.env, lambda: calls.append("environ")) as watch:
        assert watch.connection is None
    server_side, client_side = socket.socketpair()
    with server_side:
        environ = testing.create_environ()
        environ["gunicorn.socket"] = server_side
        with watch_hangup(falcon.Request(environ), lambda: (calls.append("gunicorn"), called.set()), poll_s=0.01):
            client_side.close()
            assert called.wait(5)
    assert calls == ["gunicorn"]
