"""Fetching the page a model asked for, without letting the model reach into the server's own network.

    fetcher = PageFetcher(allow_private=False, timeout_s=10)
    page = fetcher.page("https://example.com/guide")          # Page(url, title, text), or SearchError

The URL comes from model output, which anyone who can send a prompt can steer, so without care the server
becomes a proxy into whatever it can reach: 127.0.0.1's admin ports, the cloud metadata address
169.254.169.254, the office network. Every hop (the first request and each redirect) is therefore checked:

- only `http` and `https`, and no credentials in the URL;
- the host is resolved here, and every address it resolves to must be a public one (`public_address`):
  loopback, private, link-local, shared (CGNAT), reserved and multicast addresses are refused, an
  IPv4-mapped IPv6 address is judged as the IPv4 address it carries;
- the connection then goes to the address that was checked, not to the name (the request is sent to the IP
  with the original `Host` header and TLS server name, so certificates are still verified against the
  name): a DNS answer that changes between the check and the connection (DNS rebinding) cannot redirect it;
- redirects are followed by hand, at most `MAX_REDIRECTS`, each one checked like the first;
- environment proxies are ignored (a proxy would connect to names we did not check);
- one wall-clock deadline for the whole fetch, on top of httpx's connect / read timeouts, so a server that
  drips a byte at a time cannot hold the request; at most `max_bytes` of the body are read.

`--search-allow-private` turns the address check off (a self-hoster's intranet docs, or tests on 127.0.0.1);
schemes, credentials, redirects, sizes and deadlines stay checked.

We use `httpx2`: the maintained continuation of httpx (same API, kept by Pydantic since httpx went quiet),
and the HTTP client the openai SDK itself now uses, so the server does not carry a second HTTP stack.
"""
from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urljoin

import httpx2

from .backend import Page, SearchError
from .extract import page_text

MAX_REDIRECTS = 5
MAX_PAGE_BYTES = 2 * 2**20                   # enough for any article; past it the rest is not read
USER_AGENT = "refengine-search/0.1"
READABLE_TYPES = ("text/html", "application/xhtml+xml", "text/plain", "text/markdown", "text/x-markdown")

Resolve = Callable[[str, int], list[str]]


def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (an IP literal resolves to itself)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise SearchError(f"cannot resolve {host!r}: {error}") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


def public_address(address: str) -> bool:
    """Whether `address` is on the public internet: not loopback, private, link-local, shared (100.64/10),
    reserved, unspecified or multicast."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])         # an IPv6 scope id ("fe80::1%eth0") aside
    if ip.version == 6 and ip.ipv4_mapped is not None:          # ::ffff:127.0.0.1 is 127.0.0.1
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class Hop:
    """One checked request: where to connect, and the name the server must see."""
    url: httpx2.URL                          # with the checked address in place of the host name
    host_header: str
    server_name: str


@dataclass(frozen=True)
class Fetched:
    url: str                                 # the URL that answered, after redirects
    media_type: str                          # "text/html", without parameters
    charset: str | None
    body: bytes


class PageFetcher:
    """GET a page under the rules of the module docstring. Thread-safe (httpx clients are). `resolve` and
    `public` are the name lookup and the address rule (a test may narrow them, e.g. call one loopback
    address public to follow a redirect from it)."""

    def __init__(self, *, allow_private: bool = False, timeout_s: float = 10.0, max_bytes: int = MAX_PAGE_BYTES,
                 resolve: Resolve = resolve_host, public: Callable[[str], bool] = public_address):
        self.allow_private, self.timeout_s, self.max_bytes = allow_private, timeout_s, max_bytes
        self.resolve, self.public = resolve, public
        self._client = httpx2.Client(timeout=timeout_s, follow_redirects=False, trust_env=False,
                                     headers={"User-Agent": USER_AGENT, "Accept": "text/html, text/plain;q=0.9"})

    def page(self, url: str) -> Page:
        """The page's title and readable text (HTML through trafilatura, plain text as it is)."""
        fetched = self.get(url)
        if fetched.media_type in ("text/html", "application/xhtml+xml"):
            title, text = page_text(fetched.body, fetched.url)
        else:
            title, text = "", fetched.body.decode(fetched.charset or "utf-8", errors="replace")
        return Page(url=fetched.url, title=title or fetched.url, text=text)

    def get(self, url: str) -> Fetched:
        deadline = time.monotonic() + self.timeout_s
        for _ in range(MAX_REDIRECTS + 1):
            if time.monotonic() > deadline:
                raise SearchError(f"{url} did not answer within {self.timeout_s:g} s")
            hop = self.check(url)
            try:
                with self._client.stream("GET", hop.url, headers={"Host": hop.host_header},
                                         extensions={"sni_hostname": hop.server_name}) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers["location"])
                        continue
                    return self._read(url, response, deadline)
            except httpx2.TimeoutException:
                raise SearchError(f"{url} did not answer within {self.timeout_s:g} s") from None
            except httpx2.HTTPError as error:
                raise SearchError(f"could not fetch {url}: {type(error).__name__}: {error}") from None
        raise SearchError(f"{url} redirected more than {MAX_REDIRECTS} times")

    def check(self, url: str) -> Hop:
        """The hop to `url`, or SearchError when the rules forbid it."""
        try:
            parsed = httpx2.URL(url)
        except httpx2.InvalidURL as error:
            raise SearchError(f"{url!r} is not a valid URL: {error}") from None
        if parsed.scheme not in ("http", "https"):
            raise SearchError(f"only http and https pages are fetched, not {parsed.scheme or 'a relative'} URLs")
        if parsed.userinfo:
            raise SearchError("URLs with credentials (user:password@) are not fetched")
        host = parsed.raw_host.decode("ascii")                  # an international name in its IDNA form
        if not host:
            raise SearchError(f"{url!r} names no host")
        addresses = self.resolve(host, parsed.port or (443 if parsed.scheme == "https" else 80))
        if not addresses:
            raise SearchError(f"{host!r} resolves to no address")
        if not self.allow_private:
            private = [a for a in addresses if not self.public(a)]
            if private:
                raise SearchError(f"{host} resolves to {private[0]}, a loopback, private or reserved address: "
                                  "this server does not fetch pages from its own network")
        return Hop(url=parsed.copy_with(host=addresses[0].split("%", 1)[0]),
                   host_header=parsed.netloc.decode("ascii"), server_name=host)

    def _read(self, url: str, response: httpx2.Response, deadline: float) -> Fetched:
        if response.status_code >= 400:
            raise SearchError(f"{url} answered HTTP {response.status_code}")
        media_type = response.headers.get("content-type", "text/html").split(";", 1)[0].strip().lower()
        if media_type not in READABLE_TYPES:
            raise SearchError(f"{url} is {media_type}, not a page this server reads (HTML or plain text)")
        body = bytearray()
        for chunk in response.iter_bytes():           # decoded (gzip, ...), so the cap counts the real text
            body += chunk
            if len(body) >= self.max_bytes:
                del body[self.max_bytes:]
                break
            if time.monotonic() > deadline:
                raise SearchError(f"{url} did not finish within {self.timeout_s:g} s")
        return Fetched(url=url, media_type=media_type, charset=response.charset_encoding, body=bytes(body))

def endpoint_client(timeout_s: float) -> httpx2.Client:
    """A client for a search service the operator configured (SearxNG, DuckDuckGo): its address is the
    operator's choice, so no address rules; environment proxies apply, as they would to any client."""
    return httpx2.Client(timeout=timeout_s, follow_redirects=True, headers={"User-Agent": USER_AGENT})


def call_endpoint(client: httpx2.Client, url: str, params: dict, service: str,
                  hints: dict[int, str] | None = None) -> httpx2.Response:
    """GET a search service; a timeout, a connection failure or an HTTP error is a SearchError naming it (with
    `hints[status]` when there is one: what the operator can do about it)."""
    try:
        response = client.get(url, params=params)
    except httpx2.TimeoutException:
        raise SearchError(f"{service} did not answer in time") from None
    except httpx2.HTTPError as error:
        raise SearchError(f"{service} could not be reached: {type(error).__name__}: {error}") from None
    if response.status_code >= 400:
        hint = (hints or {}).get(response.status_code)
        raise SearchError(f"{service} answered HTTP {response.status_code}" + (f": {hint}" if hint else ""))
    return response
