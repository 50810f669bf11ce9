"""Authentication and server-side URL fetching without server-side request forgery.

Fetching a URL on a client's behalf lets that client reach whatever the server can reach: cloud
metadata endpoints (169.254.169.254), admin ports on loopback, the private network. So fetching is
off unless enabled, and then every destination is resolved first and refused unless *all* of its
addresses are public; the connection goes to the address that was checked (not to a second DNS
answer, which defeats DNS rebinding), redirects are followed by hand and each target is checked the
same way, and the download is capped in bytes and in time.
"""

from __future__ import annotations

import hmac
import http.client
import ipaddress
import os
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urljoin, urlsplit

from clipforge.serve.limits import InputError

TOKEN_ENV = "CLIPFORGE_TOKEN"
_REDIRECTS = (301, 302, 303, 307, 308)


def read_token(token_file: str | os.PathLike | None = None, env: str = TOKEN_ENV) -> str | None:
    """The bearer token from ``token_file`` (first line), else the environment variable, else None."""
    if token_file is not None:
        lines = Path(token_file).read_text(encoding="utf-8").splitlines()
        token = lines[0].strip() if lines else ""
        if not token:
            raise ValueError(f"{token_file}: the token file is empty")
        return token
    return os.environ.get(env) or None


def token_matches(authorization: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time (no timing side channel)."""
    if not authorization or not authorization.startswith("Bearer "):
        return False
    given = authorization[len("Bearer ") :].strip().encode("utf-8")
    return hmac.compare_digest(given, token.encode("utf-8"))


@dataclass(frozen=True)
class FetchConfig:
    """max_bytes: download cap. timeout_s: per socket operation and for the whole fetch.
    max_redirects: hops followed, each target re-checked. allow_networks: CIDRs let through although
    not public (e.g. an internal image store); empty by default."""

    max_bytes: int = 16 * 1024 * 1024
    timeout_s: float = 10.0
    max_redirects: int = 3
    allow_networks: tuple[str, ...] = ()


def is_public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """False for loopback, private, link-local, multicast, reserved, unspecified and shared addresses."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback in disguise
    bad = (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved
           or ip.is_unspecified)
    return ip.is_global and not bad


class UrlFetcher:
    """``fetch(url) -> bytes`` for http(s) URLs whose every address is public (see the module doc)."""

    def __init__(self, config: FetchConfig = FetchConfig(),
                 resolver: Callable[[str, int], list[str]] | None = None):
        self.config = config
        self.allowed = tuple(ipaddress.ip_network(n, strict=False) for n in config.allow_networks)
        self.resolve = resolver or _resolve

    def fetch(self, url: str) -> bytes:
        deadline = time.monotonic() + self.config.timeout_s
        for _ in range(self.config.max_redirects + 1):
            scheme, host, port, target = _split(url)
            address = self.check_destination(host, port)
            status, location, data = self._get(scheme, host, port, address, target, deadline)
            if status in _REDIRECTS:
                if not location:
                    raise InputError(502, f"{url}: redirect without a Location header")
                url = urljoin(url, location)
                continue
            if status != 200:
                raise InputError(502, f"{url}: the server answered HTTP {status}")
            return data
        raise InputError(502, f"{url}: more than {self.config.max_redirects} redirects")

    def check_destination(self, host: str, port: int) -> str:
        """The address to connect to; raises InputError(403) unless every resolved address is allowed."""
        try:
            addresses = [ipaddress.ip_address(a) for a in self.resolve(host, port)]
        except (OSError, ValueError) as err:
            raise InputError(400, f"cannot resolve host {host!r}: {err}") from None
        if not addresses:
            raise InputError(400, f"host {host!r} has no address")
        for ip in addresses:
            if not (is_public_address(ip) or any(ip in net for net in self.allowed)):
                raise InputError(403, f"refused to fetch from {host!r}: it resolves to {ip}, which is not a "
                                      "public address (loopback, private, link-local, multicast or reserved)")
        return str(addresses[0])

    def _get(self, scheme: str, host: str, port: int, address: str, target: str,
             deadline: float) -> tuple[int, str | None, bytes]:
        timeout = max(0.1, deadline - time.monotonic())
        conn = (_PinnedHTTPS if scheme == "https" else _PinnedHTTP)(host, port, address, timeout)
        try:
            conn.request("GET", target, headers={"User-Agent": "clipforge", "Accept": "image/*"})
            response = conn.getresponse()
            if response.status in _REDIRECTS or response.status != 200:
                return response.status, response.getheader("Location"), b""
            return 200, None, self._read_capped(response, deadline)
        except (OSError, http.client.HTTPException) as err:
            raise InputError(502, f"fetching from {host!r} failed: {type(err).__name__}: {err}") from None
        finally:
            conn.close()

    def _read_capped(self, response: http.client.HTTPResponse, deadline: float) -> bytes:
        cap = self.config.max_bytes
        declared = response.getheader("Content-Length")
        if declared and declared.isdigit() and int(declared) > cap:
            raise InputError(413, f"the remote image is {declared} bytes, the limit is {cap}")
        chunks, size = [], 0
        while True:
            if time.monotonic() > deadline:
                raise InputError(502, f"the download took longer than {self.config.timeout_s} s")
            chunk = response.read(65536)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > cap:
                raise InputError(413, f"the remote image is larger than {cap} bytes")
            chunks.append(chunk)


def _split(url: str) -> tuple[str, str, int, str]:
    if not isinstance(url, str) or len(url) > 4096:
        raise InputError(400, "url: expected a string of at most 4096 characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(400, f"url {url[:200]!r}: only http:// and https:// URLs with a host are fetched")
    if parts.username or parts.password:
        raise InputError(400, "url: credentials in URLs are not accepted")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InputError(400, f"url {url[:200]!r}: invalid port") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port, target


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to the checked address; the Host header still names the host."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """As _PinnedHTTP, with TLS verified against the host name (SNI and certificate check)."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


__all__ = ["FetchConfig", "TOKEN_ENV", "UrlFetcher", "is_public_address", "read_token", "token_matches"]
