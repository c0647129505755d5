"""Broker URLs: each malformed shape is refused with one line naming the problem, never
the password; several hosts in one URL; single-host URLs that aio-pika reads back the
same; masking that never fails. Pure code, no broker."""

from __future__ import annotations

import random
from dataclasses import replace
from urllib.parse import parse_qsl, quote

import aiormq
import pytest
import yarl

from rabbitworker.errors import ConfigurationError
from rabbitworker.urls import BrokerURL, mask_url, parse_broker_url, url_secrets

PW = "S3cr3t-7f2a"  # must never appear in a message, repr or masked form
SPECIAL_USER = "us@r:/?#%"
SPECIAL_PW = f"{PW}@/:?#%! +é"
SPECIAL_VHOST = "v@/:?#%é"
SPECIAL_URL = (
    f"amqp://{quote(SPECIAL_USER, safe='')}:{quote(SPECIAL_PW, safe='')}"
    f"@h1,h2:5673/{quote(SPECIAL_VHOST, safe='')}?heartbeat=7&name=w%40box"
)
PREFIX = "invalid broker URL"
TLS_OPTIONS = (
    "cafile=/etc/ca.pem&certfile=/c.pem&keyfile=/k.pem&no_verify_ssl=1&reconnect_interval=2"
    "&name=w%40box"
)
UNENCODED = "an '@' after the host: percent-encode '/', '?' and '#'"

# url, the problem the message names, the masked URL it shows (None: no URL shown)
REFUSED = [
    ("not-a-url", "not a URL (expected amqp://", None),
    (f"guest:{PW}@localhost", "not a URL", None),
    ("localhost:5672", "not a URL", None),
    (f"//guest:{PW}@localhost/", "no scheme: start it with amqp://", "//guest:***@localhost/"),
    (f"http://app:{PW}@rabbit/", "unsupported scheme 'http'", "http://app:***@rabbit/"),
    (f"https://app:{PW}@rabbit/", "unsupported scheme 'https'", "https://app:***@rabbit/"),
    (f"redis://:{PW}@localhost:6379/0", "unsupported scheme 'redis'", None),
    (f"amqp:/guest:{PW}@host/", "one '/' after 'amqp:' where two", "amqp:/guest:***@host/"),
    (f"amqp:///guest:{PW}@host/", "3 '/' after 'amqp:' where two", "amqp:///guest:***@host/"),
    (f"amqp:guest:{PW}@host/", "no '/' after 'amqp:' where two", None),
    ("amqp://", "no host", "amqp://"),
    (f"amqp://app:{PW}@/prod", "no host", "amqp://app:***@/prod"),
    (f"amqp://app:{PW}@:5672/", "no host", "amqp://app:***@:5672/"),
    (f"amqp://app:{PW}/x@host/", UNENCODED, "amqp://app:***@host/"),
    (f"amqp://app:x/{PW}@host/", UNENCODED, "amqp://app:***@host/"),
    (f"amqp://app:{PW}?x@host/", UNENCODED, "amqp://app:***@host/"),
    (f"amqp://app:x?{PW}@host/", UNENCODED, "amqp://app:***@host/"),
    (f"amqp://app:{PW}#x@host/", UNENCODED, "amqp://app:***@host/"),
    (f"amqp://app:x#{PW}@host/", UNENCODED, "amqp://app:***@host/"),
    (f"amqp://app:x@y/{PW}@host/", UNENCODED, "amqp://app:***@host/"),
    ("amqp://host/v@x", UNENCODED, "amqp://host/v@x"),
    ("amqp://host/?name=w@box", UNENCODED, "amqp://host/?name=w@box"),
    ("amqp://host/prod#x", "a '#' in the URL: percent-encode it as %23", "amqp://host/prod#x"),
    (f"amqp://app:{PW}@host:notaport/", "the port of host 'host' is not a number", None),
    (f"amqp://app:{PW}@host:70000/", "the port of host 'host' is out of range", None),
    (f"amqp://app:{PW}@host:0/", "the port of host 'host' is out of range", None),
    (f"amqp://app:{PW}@host:/", "the port of host 'host' is empty", None),
    (f"amqp://app:{PW}@h1,h2:99999/", "the port of host 'h2' is out of range", None),
    (f"amqp://app:{PW}/", "the port of host 'app' is not a number", "amqp://app:***/"),
    ("amqp://app:123456/", "the port of host 'app' is out of range", "amqp://app:***/"),
    (f"amqp://app:{PW}@::1/", "an IPv6 address goes in brackets", None),
    (f"amqp://app:{PW}@[::1/", "a '[' without its ']'", None),
    (f"amqp://app:{PW}@[nope]:5672/", "[nope] is not an IPv6 address", None),
    (f"amqp://app:{PW}@[::1]x/", "unexpected text after [::1]", None),
    (f"amqp://app:{PW}@exa mple/", "'exa mple' is not a valid host name", None),
    (f"amqp://app:{PW}@h1,,h2/", "empty host in the host list", "amqp://app:***@h1,,h2/"),
    (f"amqp://app:{PW}@h1:5672,/", "empty host in the host list", None),
    (f"amqp://app:{PW}@h1/,amqp://app:{PW}@h2/", "several URLs in one string", None),
    (f"amqp://app:{PW}@h/bad%zz", "the vhost has a '%' not followed by two hex", None),
    (f"amqp://app:{PW}@h/%ff", "the vhost is not UTF-8 once percent-decoded", None),
    (f"amqp://app:{PW}@h/a/b", "a '/' in the vhost: write it as %2F", None),
    (f"amqp://app:{PW}@h/prod/", "a '/' in the vhost", "amqp://app:***@h/prod/"),
    (f"amqp://app:{PW}%zz@h/", "the password has a '%' not followed", "amqp://app:***@h/"),
    (f"amqp://app:{PW}%C3%28@h/", "the password is not UTF-8", "amqp://app:***@h/"),
    (f"amqp://a%zz:{PW}@h/", "the user name has a '%' not followed", None),
    (f"amqp://app:{PW}@h/\nx", "a control character such as a newline", None),
]


@pytest.mark.parametrize(("url", "problem", "shown"), REFUSED, ids=[r[0] for r in REFUSED])
def test_a_malformed_url_is_refused_in_one_line_naming_the_problem_never_the_password(
    url: str, problem: str, shown: str | None
) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_broker_url(url)
    message = str(info.value)
    assert problem in message
    assert message.startswith(f"{PREFIX}{f' {shown}' if shown else ''}")
    if problem.startswith("not a URL"):
        assert message.startswith(f"{PREFIX}: "), "a non-URL could be anything"
    assert "\n" not in message
    assert PW not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def broker(
    *hosts: tuple[str, int],
    scheme: str = "amqp",
    username: str | None = None,
    password: str | None = None,
    vhost: str = "/",
    query: str = "",
) -> BrokerURL:
    return BrokerURL(scheme, hosts, username, password, vhost, query)


ACCEPTED = [
    ("amqp://host", broker(("host", 5672))),
    ("amqps://host/", broker(("host", 5671), scheme="amqps")),
    ("AMQP://host:1", broker(("host", 1))),
    (f"amqp://app:{PW}@host:5673/prod", broker(("host", 5673), username="app", password=PW,
                                               vhost="prod")),
    ("amqp://guest:guest@localhost/", broker(("localhost", 5672), username="guest",
                                             password="guest")),
    ("amqp://u:@h/%2F", broker(("h", 5672), username="u", password="")),
    (f"amqp://:{PW}@h/", broker(("h", 5672), password=PW)),
    ("amqp://app@h/my%2Fvhost%20x", broker(("h", 5672), username="app", vhost="my/vhost x")),
    (f"amqp://a:{PW}:x@h/", broker(("h", 5672), username="a", password=f"{PW}:x")),
    (f"amqp://a:{PW}@x@h/", broker(("h", 5672), username="a", password=f"{PW}@x")),
    (SPECIAL_URL, broker(("h1", 5672), ("h2", 5673), username=SPECIAL_USER,
                         password=SPECIAL_PW, vhost=SPECIAL_VHOST,
                         query="heartbeat=7&name=w%40box")),
    ("amqp://u:p@[::1]:5673/", broker(("::1", 5673), username="u", password="p")),
    ("amqp://u:p@[::1],[fe80::1]:5673,h3/v?heartbeat=5",
     broker(("::1", 5672), ("fe80::1", 5673), ("h3", 5672), username="u", password="p",
            vhost="v", query="heartbeat=5")),
    (f"amqps://app:{PW}@rabbit.example/prod?{TLS_OPTIONS}",
     broker(("rabbit.example", 5671), scheme="amqps", username="app", password=PW,
            vhost="prod", query=TLS_OPTIONS)),
    ("  amqp://h/\n", broker(("h", 5672))),
]  # fmt: skip


@pytest.mark.parametrize(("url", "expected"), ACCEPTED, ids=[u.strip() for u, _ in ACCEPTED])
def test_a_valid_url_is_parsed_into_decoded_fields(url: str, expected: BrokerURL) -> None:
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize("url", [url for url, _ in ACCEPTED])
def test_each_single_host_url_parses_back_to_the_same_fields(url: str) -> None:
    parsed = parse_broker_url(url)
    for i, host in enumerate(parsed.hosts):
        assert parse_broker_url(parsed.url_for(i)) == replace(parsed, hosts=(host,))


@pytest.mark.parametrize("url", [url for url, _ in ACCEPTED])
async def test_aio_pika_reads_each_single_host_url_as_parsed(url: str) -> None:
    parsed = parse_broker_url(url)
    for i, (host, port) in enumerate(parsed.hosts):
        single = parsed.url_for(i)
        seen = yarl.URL(single)
        assert (seen.scheme, seen.host, seen.port) == (parsed.scheme, host, port)
        assert (seen.user, seen.password) == (parsed.username, parsed.password)
        assert dict(seen.query) == dict(parse_qsl(parsed.query, keep_blank_values=True))
        # aiormq's own reading of the vhost, what Connection.Open sends
        assert aiormq.Connection(single).vhost == parsed.vhost


def test_url_for_names_one_host_and_keeps_credentials_vhost_and_options() -> None:
    parsed = parse_broker_url("amqp://u:p%2Fw@h1,[::1]:5673/v%2Fx?heartbeat=5")
    assert parsed.url_for(0) == "amqp://u:p%2Fw@h1:5672/v%2Fx?heartbeat=5"
    assert parsed.url_for(1) == "amqp://u:p%2Fw@[::1]:5673/v%2Fx?heartbeat=5"
    with pytest.raises(IndexError):
        parsed.url_for(2)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (f"amqp://user:{PW}@h1,h2:5673/vhost?x=1", "amqp://user:***@h1:5672,h2:5673/vhost?x=1"),
        (f"amqps://:{PW}@[::1]/%2F", "amqps://:***@[::1]:5671/"),
        ("amqp://app:@h/", "amqp://app:***@h:5672/"),
        ("amqp://app@h/", "amqp://app@h:5672/"),
        ("amqp://h?heartbeat=5", "amqp://h:5672/?heartbeat=5"),
    ],
)
def test_the_masked_form_names_every_host_and_port_and_hides_only_the_password(
    url: str, masked: str
) -> None:
    assert parse_broker_url(url).masked == masked


def test_a_parsed_url_shows_its_password_masked_in_repr_str_and_masked() -> None:
    parsed = parse_broker_url(f"amqp://user:{PW}@h1:5672,h2:5673/vhost?heartbeat=5")
    masked = "amqp://user:***@h1:5672,h2:5673/vhost?heartbeat=5"
    assert parsed.masked == masked
    assert str(parsed) == masked
    assert repr(parsed) == f"BrokerURL({masked!r})"
    assert f"{parsed}" == masked and f"{parsed!r}" == repr(parsed)
    special = parse_broker_url(SPECIAL_URL)
    for text in (special.masked, str(special), repr(special)):
        assert PW not in text and "***" in text


MASKED = [
    (
        "amqps://app:s3cr%21t@rabbit.example:5671/prod?cafile=/etc/ca.pem",
        "amqps://app:***@rabbit.example:5671/prod?cafile=/etc/ca.pem",
    ),
    ("amqps://rabbit.example/", "amqps://rabbit.example/"),
    ("amqp://h1:5672,h2:5673/", "amqp://h1:5672,h2:5673/"),
    ("amqp://[::1]:5672/", "amqp://[::1]:5672/"),
    (f"amqp://u:{PW}@h1:5672,h2:5673/v?x=1", "amqp://u:***@h1:5672,h2:5673/v?x=1"),
    (f"amqp:/guest:{PW}@host/", "amqp:/guest:***@host/"),
    (f"amqp://u:{PW}/?#@:x@host/v", "amqp://u:***@host/v"),
    (f"amqp://u:{PW}@h/?name=w@box", "amqp://u:***@box"),
    (f"guest:{PW}@host", "guest:***@host"),
    (f"guest:{PW}", "guest:***"),
    (f"amqp:guest:{PW}@host", "amqp:***@host"),
    (f"amqp://user:{PW}", "amqp://user:***"),
    ("amqp://user:***@host/", "amqp://user:***@host/"),
    ("not-a-url", "not-a-url"),
    ("", ""),
]


@pytest.mark.parametrize(("url", "masked"), MASKED, ids=[m[0] or "empty" for m in MASKED])
def test_mask_url_replaces_the_password_and_keeps_the_rest_as_written(
    url: str, masked: str
) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize("special", list("/?#@:%"))
@pytest.mark.parametrize(
    "shape", ["amqp://u:{}@h/", "amqp:/u:{}@h/", "amqp:///u:{}@h/", "http://u:{}@h/", "u:{}@h"]
)
def test_a_password_with_an_unencoded_character_is_never_shown(shape: str, special: str) -> None:
    for password in (f"{PW}{special}x", f"x{special}{PW}", f"{PW}{special}"):
        url = shape.format(password)
        assert PW not in mask_url(url)
        assert password in url_secrets(url)
        try:
            message = repr(parse_broker_url(url))
        except ConfigurationError as exc:
            message = str(exc)
        assert PW not in message


def test_mask_url_never_raises_whatever_the_string() -> None:
    rng = random.Random(7)
    alphabet = "amqp:/@?#%[],.x1 \n"
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(30)))
        assert isinstance(mask_url(text), str)
        assert isinstance(url_secrets(text), set)


SECRETS = [
    ("amqp://u:p%40ss-9f3e1c@h/", {"p%40ss-9f3e1c", "p@ss-9f3e1c"}),
    (f"amqp:/app:{PW}/x@h/", {f"{PW}/x"}),
    (f"amqp://app:{PW}", {PW}),
    ("amqp://guest:guest@localhost:5672/", set()),
    ("amqp://gu%65st:guest@localhost:5672/", set()),
    ("amqp://u:@h/", set()),
    ("amqp://u@h/", set()),
    ("amqp://h1:5672,h2/", set()),
    ("not-a-url", set()),
]


@pytest.mark.parametrize(("url", "expected"), SECRETS, ids=[s[0] for s in SECRETS])
def test_url_secrets_gives_the_password_as_written_and_decoded(
    url: str, expected: set[str]
) -> None:
    found = url_secrets(url)
    assert expected <= found
    assert bool(found) == bool(expected)


def test_masking_the_url_secrets_hides_every_form_aio_pika_may_print() -> None:
    parsed = parse_broker_url(SPECIAL_URL)
    single = parsed.url_for(0)
    text = " ".join([SPECIAL_URL, single, str(yarl.URL(single)), SPECIAL_PW])
    for secret in sorted(url_secrets(SPECIAL_URL), key=len, reverse=True):
        text = text.replace(secret, "***")
    assert PW not in text
