"""Broker URLs: parsing with one-line errors that never show the password, several
hosts in one URL, and password masking that never fails, whatever the string.

Accepted form (one string; a list of URLs is not accepted, since settings and
`RABBITWORKER_URL` hold one string and one syntax leaves nothing to reconcile)::

    amqp[s]://[user[:password]@]host[:port][,host[:port]...][/vhost][?options]

- User name, password and vhost are percent-encoded: `/` as %2F, `?` as %3F, `#` as
  %23, `@` as %40, `%` as %25. An empty path, or `/%2F`, is the vhost "/"; a `/`
  inside the vhost must be %2F.
- Hosts are comma-separated and share the credentials, vhost and options; an IPv6
  address goes in brackets (`[::1]:5672`). Ports default to 5672 (amqp), 5671 (amqps).
  `BrokerURL.url_for(i)` is the single-host URL aio-pika connects to.
- Options (`heartbeat`, `name`, `cafile`, `no_verify_ssl`, ...) are kept verbatim for
  aio-pika. An `@` after the host is refused (write it %40 in a vhost or option):
  it almost always means a password with an unencoded `/`, `?` or `#`.
"""

from __future__ import annotations

import ipaddress
import re
from contextlib import suppress
from dataclasses import dataclass
from urllib.parse import quote, unquote

from yarl import URL

from .errors import ConfigurationError

__all__ = ["DEFAULT_PORTS", "BrokerURL", "mask_url", "parse_broker_url", "url_secrets"]

DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}

_SYNTAX = "amqp://[user:password@]host[:port][/vhost]"
_SCHEME = re.compile(r"\s*([A-Za-z][A-Za-z0-9+.-]*):(/*)")
_NETLOC_END = re.compile(r"[/?#]")
_ANOTHER_URL = re.compile(r",\s*[A-Za-z][A-Za-z0-9+.-]*:/")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNENCODED = (
    "an '@' after the host: percent-encode '/', '?' and '#' in the user name and password"
    " ('/' as %2F, '?' as %3F, '#' as %23), and '@' in the vhost or options as %40"
)


@dataclass(frozen=True, repr=False)
class BrokerURL:
    """A parsed broker URL; user name, password and vhost are percent-decoded,
    `query` is the raw option string. Its repr and str mask the password."""

    scheme: str
    hosts: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    vhost: str = "/"
    query: str = ""

    @property
    def masked(self) -> str:
        """The URL with every host and `***` for the password, safe to log."""
        return self._format(self.hosts, password=None if self.password is None else "***")

    def url_for(self, host_index: int) -> str:
        """The single-host URL for `hosts[host_index]`, for aio-pika to connect to.

        Raises IndexError for an index outside `hosts`.
        """
        password = None if self.password is None else quote(self.password, safe="")
        return self._format((self.hosts[host_index],), password=password)

    def _format(self, hosts: tuple[tuple[str, int], ...], *, password: str | None) -> str:
        userinfo = ""
        if self.username is not None or password is not None:
            userinfo = quote(self.username or "", safe="")
            userinfo += "@" if password is None else f":{password}@"
        netloc = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in hosts)
        path = "/" if self.vhost == "/" else "/" + quote(self.vhost, safe="")
        query = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{userinfo}{netloc}{path}{query}"

    def __repr__(self) -> str:
        return f"BrokerURL({self.masked!r})"

    def __str__(self) -> str:
        return self.masked


class _Problem(ValueError):
    """What is wrong with a URL; `show_url` is False when even its masked form may
    reveal a password (the string may not be a URL at all)."""

    def __init__(self, problem: str, *, show_url: bool = True) -> None:
        super().__init__(problem)
        self.show_url = show_url


def parse_broker_url(url: str) -> BrokerURL:
    """Parse an amqp:// or amqps:// URL, with one host or several (see the module doc).

    Surrounding whitespace is ignored. Raises `ConfigurationError` with one line naming
    the problem and, when masking it is safe, the URL with its password masked.
    """
    url = url.strip()
    try:
        return _parse(url)
    except _Problem as problem:
        where = f" {mask_url(url)}" if problem.show_url else ""
        raise ConfigurationError(f"invalid broker URL{where}: {problem}") from None


def _parse(url: str) -> BrokerURL:
    scheme, rest = _scheme(url)
    if _ANOTHER_URL.search(rest):
        raise _Problem(
            "several URLs in one string: write one URL with a host list,"
            f" {scheme}://user:password@host1,host2/vhost"
        )
    end = _netloc_end(rest, 0)
    netloc, tail = rest[:end], rest[end:]
    if "@" in tail:
        raise _Problem(_UNENCODED)
    if "#" in tail:
        raise _Problem("a '#' in the URL: percent-encode it as %23")
    path, _, query = tail.partition("?")
    userinfo, at, hostlist = netloc.rpartition("@")
    username, password = _credentials(userinfo) if at else (None, None)
    items = hostlist.split(",")
    hosts = tuple(_host_port(item, DEFAULT_PORTS[scheme], several=len(items) > 1) for item in items)
    return BrokerURL(scheme, hosts, username, password, _vhost(path), query)


def _scheme(url: str) -> tuple[str, str]:
    """The scheme and what follows its `://`."""
    if _CONTROL.search(url):
        raise _Problem("it contains a control character such as a newline", show_url=False)
    match = _SCHEME.match(url)
    if match is None and url.startswith("//"):
        raise _Problem("no scheme: start it with amqp:// or amqps://")
    if match is None or (not match.group(2) and match.group(1).lower() not in DEFAULT_PORTS):
        raise _Problem(f"not a URL (expected {_SYNTAX})", show_url=False)
    scheme, slashes = match.group(1).lower(), match.group(2)
    if scheme not in DEFAULT_PORTS:
        raise _Problem(f"unsupported scheme {scheme!r}: use amqp:// or amqps://")
    if len(slashes) != 2:
        count = {0: "no", 1: "one"}.get(len(slashes), str(len(slashes)))
        raise _Problem(f"{count} '/' after '{scheme}:' where two are needed ({scheme}://host)")
    return scheme, url[match.end() :]


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    user_text, colon, password_text = userinfo.partition(":")
    username = _decode(user_text, "user name") or None  # as yarl: empty means none
    return username, _decode(password_text, "password") if colon else None


def _netloc_end(text: str, start: int) -> int:
    found = _NETLOC_END.search(text, start)
    return len(text) if found is None else found.start()


def _host_port(item: str, default_port: int, *, several: bool) -> tuple[str, int]:
    host, port_text = _ipv6(item) if item.startswith("[") else _name(item, several)
    return host, default_port if port_text is None else _port(port_text, host)


def _ipv6(item: str) -> tuple[str, str | None]:
    host, bracket, after = item[1:].partition("]")
    if not bracket:
        raise _Problem("a '[' without its ']' in the host")
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise _Problem(f"[{host}] is not an IPv6 address") from None
    if after and not after.startswith(":"):
        raise _Problem(f"unexpected text after [{host}] (expected :port)")
    return host, after[1:] if after else None


def _name(item: str, several: bool) -> tuple[str, str | None]:
    if item.count(":") > 1:
        raise _Problem("a host with several ':' (an IPv6 address goes in brackets: [::1])")
    host, colon, port_text = item.partition(":")
    if not host:
        raise _Problem("empty host in the host list" if several else "no host")
    try:
        URL.build(scheme="amqp", host=host)
    except ValueError:
        raise _Problem(f"{host!r} is not a valid host name") from None
    return host, port_text if colon else None


def _port(text: str, host: str) -> int:
    if not text:
        raise _Problem(f"the port of host {host!r} is empty")
    if not (text.isascii() and text.isdigit()):
        raise _Problem(f"the port of host {host!r} is not a number")
    if not _is_port(text):
        raise _Problem(f"the port of host {host!r} is out of range (1-65535)")
    return int(text)


def _vhost(path: str) -> str:
    if path in ("", "/"):
        return "/"
    if "/" in path[1:]:
        raise _Problem("a '/' in the vhost: write it as %2F (no trailing '/' either)")
    return _decode(path[1:], "vhost")


def _decode(text: str, what: str) -> str:
    if _BAD_ESCAPE.search(text):
        raise _Problem(f"the {what} has a '%' not followed by two hex digits (write '%' as %25)")
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise _Problem(f"the {what} is not UTF-8 once percent-decoded") from None


def _secret_span(url: str) -> tuple[int, int, int] | None:
    """Where the password is in `url`: (user start, password start, password end).

    The userinfo runs from after `scheme:` and its slashes (or from the start, when no
    slash follows) to the last `@`: an unencoded `@` in a password is common, and a
    parsed URL has no `@` after its host. Without an `@`, a port that is not a port
    may be a password whose host was forgotten (amqp://user:secret/).
    """
    match = _SCHEME.match(url)
    start = match.end() if match is not None and match.group(2) else 0
    at = url.rfind("@")
    if at >= start:
        sep = url.find(":", start, at)
        return (start, sep + 1, at) if sep >= 0 else None
    first = url[start : _netloc_end(url, start)].split(",")[0]
    host, _, port = first.partition(":")
    if not port or host.startswith("[") or _is_port(port):
        return None
    begin = start + len(host) + 1
    return start, begin, begin + len(port)


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and 1 <= int(text) <= 65535


def mask_url(url: str) -> str:
    """`url` with its password replaced by `***`, safe to log or print.

    Never raises; keeps the rest as written, also for malformed URLs (see `_secret_span`).
    """
    try:
        span = _secret_span(url)
    except Exception:  # masking must never fail; give nothing away rather than guess
        return "<broker URL>"
    if span is None:
        return url
    _, begin, end = span
    return f"{url[:begin]}***{url[end:]}"


def url_secrets(url: str) -> set[str]:
    """The password of `url` in each form a log line may show it: as written,
    percent-decoded, and re-encoded as `url_for` and yarl write it.

    Empty when there is no password or it equals the user name (guest:guest is no
    secret, and masking the user name everywhere would garble every line). Never raises.
    """
    try:
        span = _secret_span(url)
    except Exception:  # never fail: no secret found is the answer
        return set()
    if span is None:
        return set()
    start, begin, end = span
    raw = url[begin:end]
    password = unquote(raw)
    if not password or password == unquote(url[start : begin - 1]):
        return set()
    secrets = {raw, password, quote(password, safe="")}
    with suppress(ValueError):
        secrets.add(
            URL.build(scheme="amqp", host="h", user="u", password=password).raw_password or ""
        )
    return secrets - {""}
