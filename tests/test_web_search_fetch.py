"""Page fetching for extract_page: a real HTTP server on 127.0.0.1, the real httpx client, trafilatura.

The address rule is the point: without --search-allow-private nothing on the server's own network is
fetched, whatever name or redirect leads there, and the connection goes to the address that was checked.
Refused URLs are refused before any connection is made, so these tests send nothing beyond loopback.
"""
from __future__ import annotations

import gzip

import pytest

from pages import PageServer, page, redirect, status
from refengine.search.backend import SearchError
from refengine.search.fetch import MAX_REDIRECTS, PageFetcher, public_address

ARTICLE = """<html><head><title>Widget registry</title></head><body>
<nav><a href="/">Home</a> | <a href="/docs">Docs</a> | <a href="/blog">Blog</a></nav>
<main><h1>Widget registry</h1>
<p>The widget registry listens on port 4040 unless <code>port</code> is set in widget.toml.</p>
<h2>Limits</h2><ul><li>At most 64 widgets per host.</li><li>Names are lowercase.</li></ul></main>
<footer>Copyright Example Corp. All rights reserved.</footer><script>track("visit")</script></body></html>"""


@pytest.fixture(scope="module")
def server():
    routes = {
        "/article.html": page(ARTICLE),
        "/notes.txt": page("plain notes: port 4040\n", "text/plain; charset=utf-8"),
        "/moved": redirect("/article.html"),
        "/loop": redirect("/loop"),
        "/missing": status(404),
        "/report.pdf": page(b"%PDF-1.7", "application/pdf"),
        "/big.txt": page("x" * 10_000, "text/plain"),
        "/gzipped.txt": gzipped("compressed text " * 100),
        "/to-elsewhere": redirect("http://127.0.0.2:9/secret"),
    }
    with PageServer(routes) as running:
        running.routes["/slow"] = running.hang()
        yield running


def gzipped(text: str):
    data = gzip.compress(text.encode())

    def answer(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
    return answer


@pytest.fixture(scope="module")
def allowed():
    return PageFetcher(allow_private=True, timeout_s=60)


def test_html_becomes_its_main_text_and_title(server, allowed):
    fetched = allowed.page(server.url("/article.html"))
    assert fetched.title == "Widget registry" and fetched.url == server.url("/article.html")
    assert "listens on port 4040" in fetched.text and "At most 64 widgets" in fetched.text
    assert "Copyright" not in fetched.text and "track(" not in fetched.text and "Blog" not in fetched.text
    assert "# Widget registry" in fetched.text                         # headings as Markdown


def test_plain_text_comes_back_as_it_is(server, allowed):
    assert allowed.page(server.url("/notes.txt")).text == "plain notes: port 4040\n"
    assert allowed.page(server.url("/gzipped.txt")).text == "compressed text " * 100     # Content-Encoding undone


def test_redirects_are_followed_a_bounded_number_of_times(server, allowed):
    assert allowed.page(server.url("/moved")).url == server.url("/article.html")
    before = len(server.requests)
    with pytest.raises(SearchError, match="redirected more than"):
        allowed.page(server.url("/loop"))
    assert len(server.requests) - before == MAX_REDIRECTS + 1


@pytest.mark.parametrize("path,reason", [
    ("/missing", "HTTP 404"),
    ("/report.pdf", "application/pdf"),
])
def test_errors_and_unreadable_pages_are_search_errors(server, allowed, path, reason):
    with pytest.raises(SearchError, match=reason):
        allowed.page(server.url(path))


def test_a_page_is_read_up_to_the_size_cap(server):
    capped = PageFetcher(allow_private=True, timeout_s=60, max_bytes=1000)
    assert capped.page(server.url("/big.txt")).text == "x" * 1000


def test_a_server_that_never_answers_times_out(server):
    impatient = PageFetcher(allow_private=True, timeout_s=0.5)        # the route hangs until the server stops
    with pytest.raises(SearchError, match="did not answer"):
        impatient.page(server.url("/slow"))


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/", "http://localhost:9/", "http://[::1]:9/", "http://0x7f.1:9/",      # loopback
    "http://10.1.2.3/", "http://192.168.0.1/", "http://172.16.5.4/",                          # private
    "http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/", "http://100.64.0.1/",   # link-local, CGNAT
    "http://[::ffff:127.0.0.1]/", "http://0.0.0.0/", "http://224.0.0.1/",
])
def test_the_servers_own_network_is_refused_before_connecting(url):
    with pytest.raises(SearchError, match="does not fetch pages from its own network"):
        PageFetcher().check(url)


def test_a_public_name_that_resolves_to_a_private_address_is_refused():
    rebinding = PageFetcher(resolve=lambda host, port: ["93.184.215.14", "10.0.0.7"])
    with pytest.raises(SearchError, match="10.0.0.7"):
        rebinding.check("http://docs.example.com/")


@pytest.mark.parametrize("url,reason", [
    ("file:///etc/passwd", "only http and https"), ("ftp://example.com/x", "only http and https"),
    ("gopher://example.com/", "only http and https"), ("/relative/path", "only http and https"),
    ("http://user:secret@example.com/", "credentials"),
])
def test_only_plain_http_urls_are_fetched(url, reason):
    with pytest.raises(SearchError, match=reason):
        PageFetcher(allow_private=True).check(url)


def test_a_redirect_into_the_servers_network_is_refused(server):
    """127.0.0.1 counted public for this test: its redirect to another loopback address is checked like any
    first request, and refused."""
    narrow = PageFetcher(timeout_s=60, public=lambda address: address == "127.0.0.1")
    assert "4040" in narrow.page(server.url("/moved")).text
    with pytest.raises(SearchError, match="127.0.0.2"):
        narrow.page(server.url("/to-elsewhere"))


def test_the_connection_goes_to_the_checked_address_under_the_original_name(server):
    """The name is resolved once, by the check; the request goes to that address, with the name in Host."""
    pinned = PageFetcher(allow_private=True, timeout_s=60, resolve=lambda host, port: ["127.0.0.1"])
    fetched = pinned.page(f"http://docs.internal.test:{server.port}/article.html")
    assert "4040" in fetched.text
    assert server.requests[-1][1]["Host"] == f"docs.internal.test:{server.port}"


def test_public_addresses_are_public():
    assert all(public_address(a) for a in ("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "1.1.1.1"))
