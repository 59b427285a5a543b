"""The web-download URI filter: Glance's documented rules, then the SSRF rules on top."""

from __future__ import annotations

import logging
import re
import socket
from typing import Any
from urllib.parse import urlsplit

import pytest

from appliance.errors import BadRequest, ConfigError
from appliance.urifilter import Decision, UriFilter, UriFilterConfig
from appliance.webdownload import PinnedResolver, UriRefused

PUBLIC4 = "93.184.215.14"
PUBLIC6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"

DNS: dict[str, list[str]] = {
    "public.example": [PUBLIC4],
    "public6.example": [PUBLIC6],
    "dual.example": [PUBLIC4, PUBLIC6, PUBLIC4],
    "loop.example": ["127.0.0.1"],
    "loop6.example": ["::1"],
    "private.example": ["10.0.0.5"],
    "private172.example": ["172.20.1.1"],
    "private192.example": ["192.168.7.7"],
    "cgnat.example": ["100.64.1.1"],
    "linklocal.example": ["169.254.1.1"],
    "linklocal6.example": ["fe80::1"],
    "ula.example": ["fd12:3456::1"],
    "metadata.example": ["169.254.169.254"],
    "unspecified.example": ["0.0.0.0"],
    "multicast.example": ["239.1.2.3"],
    "mixed.example": [PUBLIC4, "192.168.1.10"],
    "mixed6.example": [PUBLIC6, "fd00::5"],
    "mapped.example": ["::ffff:127.0.0.1"],
    "nat64.example": ["64:ff9b::a00:1"],  # 10.0.0.1
    "nat64public.example": ["64:ff9b::5db8:d70e"],  # 93.184.215.14
    "sixtofour.example": ["2002:7f00:1::1"],  # 127.0.0.1
    "metadata.google.internal": ["169.254.169.254"],
    "bogus.example": ["not-an-address"],
    "empty.example": [],
}


async def fake_resolve(host: str, port: int) -> list[str]:
    try:
        return DNS[host]
    except KeyError:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None


def make(**config: Any) -> UriFilter:
    return UriFilter(UriFilterConfig(**config), resolver=fake_resolve)


def assert_decision(decision: Decision, allowed: bool, reason: str) -> None:
    assert decision.allowed is allowed, decision
    if allowed:
        assert decision.reason == "accepted"
    assert reason in decision.reason, decision.reason


GLANCE_EXAMPLE = {"allowed_schemes": ("http", "https", "ftp"), "allowed_ports": (80, 443)}


@pytest.mark.parametrize(
    "config, url, allowed, reason",
    [
        # Defaults: schemes http/https, ports 80/443, no host lists.
        ({}, "http://example.org/image.qcow2", True, ""),
        ({}, "https://example.org/image.qcow2", True, ""),
        ({}, "http://example.org:443/x", True, ""),
        ({}, "https://example.org:80/x", True, ""),
        ({}, "ftp://example.org/r", False, "scheme 'ftp' is not in allowed_schemes (http, https)"),
        ({}, "file:///etc/passwd", False, "scheme 'file' is not in allowed_schemes (http, https)"),
        ({}, "gopher://example.org/", False, "scheme 'gopher' is not in allowed_schemes"),
        ({}, "http://example.org:8080/x", False, "port 8080 is not in allowed_ports (80, 443)"),
        ({}, "//example.org/x", False, "URL has no scheme"),
        ({}, "example.org/x", False, "URL has no scheme"),
        ({}, "http:///x", False, "URL has no host"),
        ({}, "http:example.org", False, "URL has no host"),
        ({}, "http://:80/x", False, "URL has no host"),
        # Glance's documented example: no port named means step 3 is skipped.
        (GLANCE_EXAMPLE, "ftp://example.org/r", True, ""),
        (GLANCE_EXAMPLE, "ftp://example.org:21/r", False, "port 21 is not in allowed_ports (80, 443)"),
        # Decision order: scheme, then host, then port.
        ({"disallowed_hosts": ("evil.example",)}, "ftp://evil.example:21/", False, "scheme 'ftp'"),
        (
            {"disallowed_hosts": ("evil.example",)},
            "http://evil.example:21/",
            False,
            "host evil.example is in disallowed_hosts",
        ),
        ({"disallowed_hosts": ("evil.example",)}, "http://good.example:21/", False, "port 21 is not in allowed_ports"),
        # A non-empty allow-list decides alone; the deny-list is ignored.
        ({"allowed_schemes": ("http",), "disallowed_schemes": ("http",)}, "http://example.org/", True, ""),
        ({"allowed_hosts": ("a.example",), "disallowed_hosts": ("a.example",)}, "http://a.example/", True, ""),
        (
            {"allowed_hosts": ("a.example",)},
            "http://b.example/",
            False,
            "host b.example is not in allowed_hosts (a.example)",
        ),
        ({"allowed_ports": (8080,), "disallowed_ports": (8080,)}, "http://example.org:8080/", True, ""),
        # An empty allow-list lets the deny-list decide.
        (
            {"allowed_schemes": (), "disallowed_schemes": ("ftp",)},
            "ftp://example.org/",
            False,
            "scheme 'ftp' is in disallowed_schemes",
        ),
        ({"allowed_schemes": (), "disallowed_schemes": ("ftp",)}, "gopher://example.org/", True, ""),
        ({"disallowed_hosts": ("bad.example",)}, "http://good.example/", True, ""),
        ({"disallowed_hosts": ("10.0.0.0/8",)}, "http://10.1.2.3/", False, "host 10.1.2.3 is in disallowed_hosts"),
        ({"disallowed_hosts": ("10.0.0.0/8",)}, "http://[::ffff:10.1.2.3]/", False, "is in disallowed_hosts"),
        (
            {"allowed_ports": (), "disallowed_ports": (22,)},
            "http://example.org:22/",
            False,
            "port 22 is in disallowed_ports",
        ),
        ({"allowed_ports": (), "disallowed_ports": (22,)}, "http://example.org:8080/", True, ""),
        # Host lists: names match names, IP/CIDR entries match literals.
        ({"allowed_hosts": ("127.0.0.0/8",)}, "http://127.0.0.1/", True, ""),
        ({"allowed_hosts": ("127.0.0.0/8",)}, "http://127.9.9.9/", True, ""),
        (
            {"allowed_hosts": ("127.0.0.0/8",)},
            "http://10.0.0.1/",
            False,
            "host 10.0.0.1 is not in allowed_hosts (127.0.0.0/8)",
        ),
        ({"allowed_hosts": ("127.0.0.0/8",)}, "http://localhost/", False, "host localhost is not in allowed_hosts"),
        ({"allowed_hosts": ("[::1]",)}, "http://[0:0:0:0:0:0:0:1]/", True, ""),
        # Cloud metadata host names are refused unless listed by name.
        (
            {},
            "http://metadata.google.internal/computeMetadata/v1/",
            False,
            "host metadata.google.internal is a cloud metadata service",
        ),
        ({}, "http://Metadata.Google.Internal./", False, "cloud metadata service"),
        ({"allowed_hosts": ("metadata.google.internal",)}, "http://metadata.google.internal/", True, ""),
    ],
)
def test_glance_rules(config: dict[str, Any], url: str, allowed: bool, reason: str) -> None:
    assert_decision(make(**config).check_syntax(url), allowed, reason)


@pytest.mark.parametrize(
    "host",
    [
        "2130706433",
        "0x7f000001",
        "0X7F000001",
        "127.1",
        "127.0.1",
        "0177.0.0.1",
        "127.0.0.01",
        "0x7f.0.0.1",
        "017700000001",
        "127.0.0.1.",
        "1.2.3.4.5",
        "0x",
        "example.0x10",
        "example.123",
        "\uff11\uff12\uff17.0.0.1",
    ],
)
def test_numeric_encoded_ipv4_hosts_are_refused(host: str) -> None:
    decision = make(allowed_hosts=("0.0.0.0/0",)).check_syntax("http://%s/" % host)
    assert_decision(decision, False, "numeric-encoded IPv4 address; only the dotted-quad form is accepted")


@pytest.mark.parametrize(
    "url, reason",
    [
        # Whitespace, control and invisible formatting characters anywhere.
        ("http://example.org/a b", "whitespace or control character (U+0020)"),
        ("http://exa\tmple.org/", "whitespace or control character (U+0009)"),
        ("http://example.org/\n", "(U+000A)"),
        ("http://example.org\r\nX-Injected: 1/", "(U+000D)"),
        (" http://example.org/", "(U+0020)"),
        ("http://example.org/\x00", "(U+0000)"),
        ("http://example.org/\x7f", "(U+007F)"),
        ("http://example\u200b.org/", "(U+200B)"),
        ("http://example.org/\u00a0", "(U+00A0)"),
        ("http://example.org/\u202e", "(U+202E)"),
        # Percent-encoded hosts, including IPv6 zone ids.
        ("http://%31%32%37.0.0.1/", "host is percent-encoded"),
        ("http://ex%61mple.org/", "host is percent-encoded"),
        ("http://[fe80::1%25eth0]/", "host is percent-encoded"),
        # Userinfo in any form.
        ("http://user@example.org/", "userinfo"),
        ("http://user:secret@example.org/", "userinfo"),
        ("http://example.org@127.0.0.1/", "userinfo"),
        ("http://@example.org/", "userinfo"),
        ("http://evil.example\\@127.0.0.1/", "userinfo"),
        # Ports.
        ("http://example.org:0/", "port 0 is not a valid port (1-65535)"),
        ("http://example.org:00/", "port 00 is not a valid port"),
        ("http://example.org:65536/", "port 65536 is not a valid port"),
        ("http://example.org:123456/", "is not a valid port"),
        ("http://example.org:8x/", "port 8x is not a valid port"),
        ("http://example.org:/", "is not a valid port"),
        ("http://example.org:+80/", "is not a valid port"),
        # Malformed hosts.
        ("http://exa_mple.org/", "is not a valid host name"),
        ("http://-bad.example/", "is not a valid host name"),
        ("http://a..b/", "is not a valid host name"),
        ("http://xn--zz.example/", "is not a valid host name"),
        ("http://" + "a" * 64 + ".example/", "is not a valid host name"),
        ("http://127.0.0.1\\.evil.example/", "is not a valid host name"),
        ("http://::1/", "is not a valid"),
        ("http://[127.0.0.1]/", "IPv"),  # newer Pythons' urlsplit refuses it first
        ("http://[v1.x]/", "is not a valid IPv6 literal"),
        ("http://[::1]x/", "is not a valid IPv6 literal"),
        ("http://[::1/", "URL is malformed"),
    ],
)
def test_syntax_and_encoding_rules(url: str, reason: str) -> None:
    assert_decision(make(allowed_ports=()).check_syntax(url), False, reason)


@pytest.mark.parametrize(
    "url, normalized, host, port",
    [
        ("HTTP://Example.ORG:80/a/b?x=1#frag", "http://example.org:80/a/b?x=1", "example.org", 80),
        ("https://example.org", "https://example.org/", "example.org", 443),
        ("http://example.org./x", "http://example.org/x", "example.org", 80),
        ("http://Bücher.Example/p", "http://xn--bcher-kva.example/p", "xn--bcher-kva.example", 80),
        ("http://\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25.org/", "http://example.org/", "example.org", 80),
        ("http://[::FFFF:8.8.8.8]:443/", "http://[::ffff:808:808]:443/", "::ffff:808:808", 443),
        ("http://%s/" % PUBLIC4, "http://%s/" % PUBLIC4, PUBLIC4, 80),
    ],
)
def test_normalization(url: str, normalized: str, host: str, port: int) -> None:
    decision = make().check_syntax(url)
    assert decision.allowed, decision
    assert (decision.url, decision.host, decision.port) == (normalized, host, port)


@pytest.mark.parametrize(
    "config, url, allowed",
    [
        ({"allowed_hosts": ("bücher.example",)}, "http://BÜCHER.example/", True),
        ({"allowed_hosts": ("bücher.example",)}, "http://xn--bcher-kva.example/", True),
        ({"allowed_hosts": ("XN--BCHER-KVA.example",)}, "http://bücher.example/", True),
        ({"disallowed_hosts": ("EXAMPLE.org",)}, "http://Example.ORG/", False),
        ({"disallowed_hosts": ("example.org",)}, "http://\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25.org/", False),
        ({"disallowed_hosts": ("example.org",)}, "http://example.org./", False),
    ],
)
def test_idna_hosts_are_normalized_before_matching(config: dict[str, Any], url: str, allowed: bool) -> None:
    assert make(**config).check_syntax(url).allowed is allowed


@pytest.mark.parametrize(
    "config, url, allowed, reason",
    [
        # Public names and literals.
        ({}, "http://public.example/", True, ""),
        ({}, "http://public6.example/", True, ""),
        ({}, "http://nat64public.example/", True, ""),
        ({}, "http://%s/" % PUBLIC4, True, ""),
        ({}, "http://[%s]/" % PUBLIC6, True, ""),
        ({}, "http://[::ffff:%s]/" % PUBLIC4, True, ""),
        # Names resolving to refused addresses; every address is checked.
        ({}, "http://loop.example/", False, "host loop.example resolves to a loopback address (127.0.0.1)"),
        ({}, "http://loop6.example/", False, "resolves to a loopback address (::1)"),
        ({}, "http://private.example/", False, "resolves to a private address (10.0.0.5)"),
        ({}, "http://private172.example/", False, "resolves to a private address (172.20.1.1)"),
        ({}, "http://private192.example/", False, "resolves to a private address (192.168.7.7)"),
        ({}, "http://cgnat.example/", False, "resolves to a private (carrier-grade NAT) address (100.64.1.1)"),
        ({}, "http://linklocal.example/", False, "resolves to a link-local address (169.254.1.1)"),
        ({}, "http://linklocal6.example/", False, "resolves to a link-local address (fe80::1)"),
        ({}, "http://ula.example/", False, "resolves to a private (unique local) address"),
        ({}, "http://metadata.example/", False, "resolves to a cloud metadata address (169.254.169.254)"),
        ({}, "http://unspecified.example/", False, "resolves to an unspecified address (0.0.0.0)"),
        ({}, "http://multicast.example/", False, "resolves to a multicast address"),
        ({}, "http://mixed.example/", False, "resolves to a private address (192.168.1.10)"),
        ({}, "http://mixed6.example/", False, "resolves to a private (unique local) address (fd00::5)"),
        ({}, "http://mapped.example/", False, "loopback address (::ffff:7f00:1, IPv4 127.0.0.1 in IPv4-mapped form)"),
        ({}, "http://nat64.example/", False, "private address (64:ff9b::a00:1, IPv4 10.0.0.1 in NAT64 form)"),
        ({}, "http://sixtofour.example/", False, "loopback address (2002:7f00:1::1, IPv4 127.0.0.1 in 6to4 form)"),
        ({}, "http://unknown.example/", False, "host unknown.example could not be resolved"),
        ({}, "http://bogus.example/", False, "resolved to an invalid address ('not-an-address')"),
        ({}, "http://empty.example/", False, "host empty.example resolves to no address"),
        # Literals in special-purpose ranges.
        ({}, "http://127.0.0.1/", False, "host 127.0.0.1 is a loopback address"),
        ({}, "http://127.255.0.1/", False, "is a loopback address"),
        ({}, "http://10.1.2.3/", False, "is a private address"),
        ({}, "http://172.16.0.1/", False, "is a private address"),
        ({}, "http://172.31.255.255/", False, "is a private address"),
        ({}, "http://192.168.0.1/", False, "is a private address"),
        ({}, "http://100.64.0.1/", False, "is a private (carrier-grade NAT) address"),
        ({}, "http://169.254.0.1/", False, "is a link-local address"),
        ({}, "http://0.0.0.0/", False, "is an unspecified address"),
        ({}, "http://0.1.2.3/", False, "is a reserved ('this network') address"),
        ({}, "http://224.0.0.1/", False, "is a multicast address"),
        ({}, "http://255.255.255.255/", False, "is a broadcast address"),
        ({}, "http://240.0.0.1/", False, "is a reserved address"),
        ({}, "http://192.0.2.1/", False, "is a documentation address"),
        ({}, "http://198.51.100.1/", False, "is a documentation address"),
        ({}, "http://203.0.113.1/", False, "is a documentation address"),
        ({}, "http://198.18.0.1/", False, "is a benchmarking address"),
        ({}, "http://[::1]/", False, "host ::1 is a loopback address"),
        ({}, "http://[::]/", False, "host :: is an unspecified address"),
        ({}, "http://[fe80::1]/", False, "is a link-local address"),
        ({}, "http://[fc00::1]/", False, "is a private (unique local) address"),
        ({}, "http://[fec0::1]/", False, "is a private (site-local) address"),
        ({}, "http://[ff02::1]/", False, "is a multicast address"),
        ({}, "http://[2001:db8::1]/", False, "is a documentation address"),
        ({}, "http://[2001::1]/", False, "is a reserved (IETF protocol assignments, incl. Teredo) address"),
        ({}, "http://[::127.0.0.1]/", False, "is a reserved (outside global unicast) address"),
        # IPv4 embedded in IPv6 forms.
        ({}, "http://[::ffff:127.0.0.1]/", False, "loopback address (IPv4 127.0.0.1 in IPv4-mapped form)"),
        ({}, "http://[::ffff:7f00:1]/", False, "loopback address (IPv4 127.0.0.1 in IPv4-mapped form)"),
        ({}, "http://[::ffff:10.0.0.1]/", False, "private address (IPv4 10.0.0.1 in IPv4-mapped form)"),
        ({}, "http://[64:ff9b::127.0.0.1]/", False, "loopback address (IPv4 127.0.0.1 in NAT64 form)"),
        ({}, "http://[64:ff9b::192.168.0.1]/", False, "private address (IPv4 192.168.0.1 in NAT64 form)"),
        ({}, "http://[2002:7f00:1::]/", False, "loopback address (IPv4 127.0.0.1 in 6to4 form)"),
        ({}, "http://[2002:a00:1::1]/", False, "private address (IPv4 10.0.0.1 in 6to4 form)"),
        # Cloud metadata addresses, plain and embedded.
        ({}, "http://169.254.169.254/latest/meta-data/", False, "host 169.254.169.254 is a cloud metadata address"),
        ({}, "http://[fd00:ec2::254]/", False, "is a cloud metadata address"),
        ({}, "http://100.100.100.200/", False, "is a cloud metadata address"),
        ({}, "http://168.63.129.16/", False, "is a cloud metadata address"),
        (
            {},
            "http://[::ffff:169.254.169.254]/",
            False,
            "cloud metadata address (IPv4 169.254.169.254 in IPv4-mapped form)",
        ),
        ({}, "http://[64:ff9b::a9fe:a9fe]/", False, "cloud metadata address (IPv4 169.254.169.254 in NAT64 form)"),
        ({}, "http://[2002:a9fe:a9fe::]/", False, "cloud metadata address (IPv4 169.254.169.254 in 6to4 form)"),
        # Explicitly allowed: literals via CIDR or the exact address, names by name.
        ({"allowed_hosts": ("127.0.0.0/8",)}, "http://127.0.0.1/", True, ""),
        ({"allowed_hosts": ("127.0.0.0/8",)}, "http://[::ffff:127.0.0.1]/", True, ""),
        ({"allowed_hosts": ("10.0.0.0/8",)}, "http://10.20.30.40/", True, ""),
        ({"allowed_hosts": ("fd00::/8",)}, "http://[fd12::1]/", True, ""),
        ({"allowed_hosts": ("192.168.1.10",)}, "http://192.168.1.10/", True, ""),
        ({"allowed_hosts": ("private.example", "10.0.0.0/8")}, "http://private.example/", True, ""),
        ({"allowed_hosts": ("mixed.example", "192.168.0.0/16")}, "http://mixed.example/", True, ""),
        ({"allowed_hosts": ("loop.example",)}, "http://loop.example/", True, ""),
        # An address entry does not allow a name that resolves to it.
        (
            {"allowed_hosts": ("127.0.0.1",)},
            "http://loop.example/",
            False,
            "host loop.example is not in allowed_hosts (127.0.0.1)",
        ),
        ({"allowed_hosts": ("10.0.0.0/8",)}, "http://private.example/", False, "is not in allowed_hosts"),
        # Metadata addresses need the exact address, not a network or the name.
        ({"allowed_hosts": ("169.254.0.0/16",)}, "http://169.254.169.254/", False, "is a cloud metadata address"),
        ({"allowed_hosts": ("169.254.0.0/16",)}, "http://169.254.1.1/", True, ""),
        ({"allowed_hosts": ("0.0.0.0/0",)}, "http://169.254.169.254/", False, "is a cloud metadata address"),
        ({"allowed_hosts": ("169.254.169.254",)}, "http://169.254.169.254/", True, ""),
        ({"allowed_hosts": ("169.254.169.254/32",)}, "http://169.254.169.254/", True, ""),
        (
            {"allowed_hosts": ("metadata.example",)},
            "http://metadata.example/",
            False,
            "resolves to a cloud metadata address",
        ),
        ({"allowed_hosts": ("metadata.example", "169.254.169.254")}, "http://metadata.example/", True, ""),
        (
            {"allowed_hosts": ("metadata.google.internal",)},
            "http://metadata.google.internal/",
            False,
            "cloud metadata address",
        ),
        (
            {"allowed_hosts": ("metadata.google.internal", "169.254.169.254")},
            "http://metadata.google.internal/",
            True,
            "",
        ),
        # With no allow-list, IP/CIDR deny entries also apply to resolved addresses.
        (
            {"disallowed_hosts": (PUBLIC4,)},
            "http://public.example/",
            False,
            "host public.example resolves to an address in disallowed_hosts (%s)" % PUBLIC4,
        ),
        ({"disallowed_hosts": (PUBLIC4,)}, "http://public6.example/", True, ""),
    ],
)
async def test_address_rules(
    config: dict[str, Any], url: str, allowed: bool, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    """What DNS answered (in parentheses) goes to the operator's log, never to the client."""
    by_name = not urlsplit(url).hostname[0].isdigit() and "[" not in url  # type: ignore[index]
    found = (
        re.fullmatch(r"(.*) \(([^()]*[\d:'][^()]*)\)", reason)
        if by_name and "not in allowed_hosts" not in reason
        else None
    )
    public, private = (found.group(1), found.group(2)) if found else (reason, "")
    with caplog.at_level(logging.INFO, logger="appliance.urifilter"):
        decision = await make(**config).check(url)
    assert_decision(decision, allowed, public)
    if private:
        assert private not in decision.reason, decision.reason
        assert "(%s)" % private in caplog.text


async def test_check_returns_every_checked_address_once() -> None:
    decision = await make().check("http://dual.example/")
    assert decision.allowed
    assert decision.addresses == (PUBLIC4, PUBLIC6)
    assert (await make().check("http://[%s]/" % PUBLIC6)).addresses == (PUBLIC6,)


async def test_check_refuses_what_check_syntax_refuses_without_resolving() -> None:
    calls: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return [PUBLIC4]

    uri_filter = UriFilter(UriFilterConfig(), resolver=resolver)
    assert not (await uri_filter.check("http://public.example:22/")).allowed
    assert not uri_filter.check_syntax("http://loop.example/").addresses
    assert calls == []
    assert (await uri_filter.check("https://public.example/")).allowed
    assert calls == ["public.example"]


async def test_default_resolver_refuses_localhost() -> None:
    decision = await UriFilter(UriFilterConfig()).check("http://localhost/")
    assert_decision(decision, False, "host localhost resolves to a loopback address")


@pytest.mark.parametrize(
    "config, message",
    [
        ({"allowed_hosts": ("exa_mple.org",)}, "import.uri_filter.allowed_hosts: 'exa_mple.org' is not a host name"),
        ({"disallowed_hosts": ("127.1",)}, "import.uri_filter.disallowed_hosts: '127.1'"),
        ({"allowed_hosts": ("10.0.0.0/33",)}, "'10.0.0.0/33'"),
        ({"allowed_ports": (0,)}, "import.uri_filter.allowed_ports: 0 is not a port number"),
        ({"disallowed_ports": (70000,)}, "import.uri_filter.disallowed_ports: 70000"),
    ],
)
def test_invalid_config_entries(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        make(**config)


async def test_pinned_resolver_answers_only_with_checked_addresses() -> None:
    decision = await make().check("http://dual.example/")
    resolver = PinnedResolver(decision)
    answers = await resolver.resolve("dual.example", 80, socket.AF_UNSPEC)
    assert [(a["host"], a["port"], a["family"]) for a in answers] == [
        (PUBLIC4, 80, socket.AF_INET),
        (PUBLIC6, 80, socket.AF_INET6),
    ]
    assert [a["host"] for a in await resolver.resolve("dual.example", 80, socket.AF_INET6)] == [PUBLIC6]
    with pytest.raises(OSError, match="was not checked"):
        await resolver.resolve("other.example", 80)
    with pytest.raises(ValueError):
        PinnedResolver(await make().check("http://loop.example/"))
    await resolver.close()


def test_uri_refused_is_a_bad_request() -> None:
    decision = Decision(False, "because")
    error = UriRefused("web-download of x refused: because", decision)
    assert isinstance(error, BadRequest)
    assert error.reason == "because" and error.decision is decision
