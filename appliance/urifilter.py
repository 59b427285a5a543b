"""The one filter for every URL the daemon fetches (web-download imports): pure policy, no
connections (appliance.webdownload fetches what it accepts).

Glance's documented web-download filter decides in order: the scheme, then the host, then the
port (only when the URI names one explicitly).  For each, a non-empty allow-list must contain the
value and the deny-list is then ignored; otherwise a non-empty deny-list must not contain it.

On top of that, because the daemon fetches on behalf of API users (a classic SSRF vector):

* URLs with whitespace or control characters, userinfo, a percent-encoded host, port 0, or a host
  that is neither a valid DNS name nor a canonical dotted quad / bracketed IPv6 literal (so none
  of `2130706433`, `0x7f000001`, `127.1`, `0177.0.0.1`) are refused before any list is consulted
  for that part.  IDNA hosts are normalized (UTS #46, lowercase, A-labels) before matching.
* `check` resolves the host and refuses it if ANY address is loopback, link-local, private,
  CGNAT, unspecified, multicast, broadcast, reserved or documentation space, including the
  IPv4 address embedded in IPv4-mapped, NAT64 (64:ff9b::/96) and 6to4 forms, unless the host
  name, the address, or a CIDR network containing it is listed in `allowed_hosts`.
* The Decision of `check` carries the addresses it approved: the fetcher
  (appliance.webdownload) connects only to those, and checks every redirect target again.

allowed_hosts / disallowed_hosts entries may be host names, IP literals or CIDR networks.  A
host name in the URL matches name entries only (Glance compares the host string; a name is not
"in" a network until it is resolved, and then only for the address rules above).  An IP literal
matches equal addresses and networks containing it, also through its embedded IPv4 form.  When
allowed_hosts is empty, IP/CIDR entries of disallowed_hosts also refuse resolved addresses.
A host name listed in allowed_hosts exempts all of its resolved addresses (the operator vouched
for that name's DNS); a wide CIDR entry (e.g. 0.0.0.0/0) exempts everything it covers.  Cloud
metadata addresses are the exception: see METADATA_ADDRESSES.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import unicodedata
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import idna

from appliance.errors import ConfigError

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21}

# Cloud instance-metadata endpoints hand out credentials, so they are refused even when a listed
# CIDR network or host name would otherwise exempt them: only an allowed_hosts entry naming
# exactly that address (or exactly that metadata host name) lets one through.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Oracle...
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IPv6 IMDS
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure WireServer (public address space, hence listed)
        "192.0.0.192",  # Oracle Cloud Classic
    )
)
METADATA_NAMES = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal"}
)


def _nets(*pairs: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), kind) for net, kind in pairs)


# First match wins, so the more specific networks come first.
_SPECIAL_V4 = _nets(
    ("0.0.0.0/32", "an unspecified"),
    ("0.0.0.0/8", "a reserved ('this network')"),
    ("10.0.0.0/8", "a private"),
    ("100.64.0.0/10", "a private (carrier-grade NAT)"),
    ("127.0.0.0/8", "a loopback"),
    ("169.254.0.0/16", "a link-local"),
    ("172.16.0.0/12", "a private"),
    ("192.0.0.0/24", "a reserved (IETF protocol assignments)"),
    ("192.0.2.0/24", "a documentation"),
    ("192.88.99.0/24", "a reserved (6to4 relay anycast)"),
    ("192.168.0.0/16", "a private"),
    ("198.18.0.0/15", "a benchmarking"),
    ("198.51.100.0/24", "a documentation"),
    ("203.0.113.0/24", "a documentation"),
    ("224.0.0.0/4", "a multicast"),
    ("255.255.255.255/32", "a broadcast"),
    ("240.0.0.0/4", "a reserved"),
)
_SPECIAL_V6 = _nets(
    ("::/128", "an unspecified"),
    ("::1/128", "a loopback"),
    ("64:ff9b:1::/48", "a private (local-use NAT64)"),
    ("100::/64", "a reserved (discard-only)"),
    ("2001:db8::/32", "a documentation"),
    ("2001::/23", "a reserved (IETF protocol assignments, incl. Teredo)"),
    ("3fff::/20", "a documentation"),
    ("fc00::/7", "a private (unique local)"),
    ("fe80::/10", "a link-local"),
    ("fec0::/10", "a private (site-local)"),
    ("ff00::/8", "a multicast"),
)
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_V4 = re.compile(r"%s(?:\.%s){3}" % (_OCTET, _OCTET))
_NUMERIC_LABEL = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")
_PORT = re.compile(r"[0-9]{1,5}")

# The schemes web-download (and an http location) can fetch; Glance's filter also names ftp,
# which no downloader here speaks, so a config that allows it is refused up front.
FETCHABLE_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class UriFilterConfig:
    """[import.uri_filter]; the defaults are Glance's."""

    allowed_schemes: tuple[str, ...] = ("http", "https")
    disallowed_schemes: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    disallowed_hosts: tuple[str, ...] = ()
    allowed_ports: tuple[int, ...] = (80, 443)
    disallowed_ports: tuple[int, ...] = ()


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # "accepted", or exactly why not
    url: str = ""  # normalized: lowercase scheme, A-label host, no fragment
    host: str = ""  # normalized; an IPv6 literal without brackets
    port: int = 0  # effective port: explicit, else the scheme's default (0 if unknown)
    addresses: tuple[str, ...] = ()  # the checked addresses the caller must connect to


def unsafe_char(text: str) -> str | None:
    """The first whitespace, control or invisible formatting character (Python's urlsplit
    silently drops some of them, so they must be refused before parsing)."""
    for ch in text:
        if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp"):
            return ch
    return None


def printable(text: str) -> str:
    """text with unsafe characters escaped, for messages and logs (no forged log lines)."""
    return "".join(ch if unsafe_char(ch) is None else "\\u%04x" % ord(ch) for ch in text)


def _embedded_v4(addr: IPAddress) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 form carries and reaches, with the form's name."""
    if isinstance(addr, ipaddress.IPv4Address):
        return None
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped, "IPv4-mapped"
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF), "NAT64"
    if addr.sixtofour is not None:
        return addr.sixtofour, "6to4"
    return None


def _views(addr: IPAddress) -> tuple[IPAddress, ...]:
    """The address and its embedded IPv4 address, so lists cannot be bypassed by re-encoding."""
    embedded = _embedded_v4(addr)
    return (addr,) if embedded is None else (addr, embedded[0])


def _classify(addr: IPAddress) -> str | None:
    """'a loopback' etc. when the address must not be fetched from by default, else None.
    Callers pass the embedded IPv4 address of mapped/NAT64/6to4 forms instead of the wrapper."""
    if isinstance(addr, ipaddress.IPv4Address):
        table: Iterable[tuple[IPNetwork, str]] = _SPECIAL_V4
    else:
        table = _SPECIAL_V6
    for net, kind in table:
        if addr in net:
            return kind
    if isinstance(addr, ipaddress.IPv6Address) and addr not in _GLOBAL_UNICAST_V6:
        return "a reserved (outside global unicast)"
    return None


def _to_ascii(host: str) -> str | None:
    """The UTS #46-mapped, lowercase A-label form without a trailing dot, or None."""
    if not host.isascii() or any(label.lower().startswith("xn--") for label in host.split(".")):
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except (UnicodeError, ValueError):
            return None
    host = host.lower()
    return host[:-1] if host.endswith(".") else host


def _ends_in_number(host: str) -> bool:
    # Browsers and inet_aton parse such a host as IPv4 (hex, octal, fewer parts, one integer).
    return bool(_NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]))


def _valid_name(host: str) -> bool:
    return 0 < len(host) <= 253 and all(_LABEL.fullmatch(label) for label in host.split("."))


def _parse_host(raw: str) -> tuple[str, IPAddress | None] | str:
    """(normalized host, address if a literal), or the reason the host is refused."""
    if raw.startswith("["):
        try:
            if not raw.endswith("]"):
                raise ValueError(raw)
            v6 = ipaddress.IPv6Address(raw[1:-1])
        except ValueError:
            return "host %s is not a valid IPv6 literal" % raw
        return str(v6), v6
    host = _to_ascii(raw)
    if host is None:
        return "host %r is not a valid host name" % raw
    if _ends_in_number(host):
        # Only the canonical dotted quad, as typed (not e.g. full-width digits), is unambiguous.
        if not _CANONICAL_V4.fullmatch(raw):
            return "host %r is a numeric-encoded IPv4 address; only the dotted-quad form is accepted" % raw
        v4 = ipaddress.IPv4Address(raw)
        return str(v4), v4
    if not _valid_name(host):
        return "host %r is not a valid host name" % raw
    return host, None


@dataclass(frozen=True)
class _HostList:
    names: frozenset[str]
    networks: tuple[IPNetwork, ...]
    shown: str  # the entries as configured, for messages

    @classmethod
    def parse(cls, key: str, entries: tuple[str, ...]) -> _HostList:
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            text = entry.strip()
            literal = text[1:-1] if text.startswith("[") and text.endswith("]") else text
            try:
                networks.append(ipaddress.ip_network(literal, strict=False))
                continue
            except ValueError:
                pass
            name = _to_ascii(text)
            if name is None or not _valid_name(name) or _ends_in_number(name):
                raise ConfigError(
                    "import.uri_filter.%s: %r is not a host name, IP address or CIDR network" % (key, entry)
                )
            names.add(name)
        return cls(frozenset(names), tuple(networks), ", ".join(entries))

    def __bool__(self) -> bool:
        return bool(self.names or self.networks)

    def matches(self, host: str, addr: IPAddress | None) -> bool:
        if addr is None:
            return host in self.names
        return self.covers(addr)

    def covers(self, addr: IPAddress) -> bool:
        return any(view in net for view in _views(addr) for net in self.networks)

    def names_exactly(self, addr: IPAddress) -> bool:
        return any(net.num_addresses == 1 and view in net for view in _views(addr) for net in self.networks)


def _glance_rule(what: str, shown: str, allow_text: str | None, in_allowed: bool, in_denied: bool) -> str | None:
    """A non-empty allow-list (allow_text not None) decides alone; else the deny-list."""
    if allow_text is not None:
        return None if in_allowed else "%s %s is not in allowed_%ss (%s)" % (what, shown, what, allow_text)
    return "%s %s is in disallowed_%ss" % (what, shown, what) if in_denied else None


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives for host, in its order of preference."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]


class UriFilter:
    def __init__(self, config: UriFilterConfig, resolver: Resolver | None = None) -> None:
        self.config = config
        self._resolve = resolver or system_resolve
        self._schemes_allowed = frozenset(s.lower() for s in config.allowed_schemes)
        self._schemes_denied = frozenset(s.lower() for s in config.disallowed_schemes)
        self._hosts_allowed = _HostList.parse("allowed_hosts", config.allowed_hosts)
        self._hosts_denied = _HostList.parse("disallowed_hosts", config.disallowed_hosts)
        for key in ("allowed_ports", "disallowed_ports"):
            bad = [
                p for p in getattr(config, key) if isinstance(p, bool) or not isinstance(p, int) or not 0 < p < 65536
            ]
            if bad:
                raise ConfigError("import.uri_filter.%s: %r is not a port number (1-65535)" % (key, bad[0]))

    def check_syntax(self, url: str) -> Decision:
        """Glance's steps 1-3 plus the encoding rules; no DNS."""
        decision, _ = self._syntax(url)
        return decision

    async def check(self, url: str) -> Decision:
        """check_syntax, then every address the host resolves to."""
        decision, literal = self._syntax(url)
        if not decision.allowed:
            return decision
        if literal is not None:
            return self._check_addresses(decision, [literal], by_name=False)
        try:
            answers = await self._resolve(decision.host, decision.port)
        except OSError as exc:
            return self._refused(url, "host %s could not be resolved" % decision.host, decision, " (%s)" % exc)
        addresses: list[IPAddress] = []
        for answer in answers:
            try:
                addr = ipaddress.ip_address(answer)
            except ValueError:
                return self._refused(
                    url, "host %s resolved to an invalid address" % decision.host, decision, " (%r)" % answer
                )
            if addr not in addresses:
                addresses.append(addr)
        if not addresses:
            return self._refused(url, "host %s resolves to no address" % decision.host, decision)
        return self._check_addresses(decision, addresses, by_name=True)

    def _refused(self, url: str, reason: str, base: Decision | None = None, private: str = "") -> Decision:
        # `private` (what DNS answered) goes to the operator's log only: a client must not learn
        # the site's internal addresses by probing names.
        log.info("URL %s refused: %s%s", printable(url), reason, private)
        if base is None:
            return Decision(False, reason)
        return Decision(False, reason, base.url, base.host, base.port)

    def _syntax(self, url: str) -> tuple[Decision, IPAddress | None]:
        """(decision, the host's address if it is an IP literal)."""
        bad = unsafe_char(url)
        if bad is not None:
            return self._refused(url, "URL contains a whitespace or control character (U+%04X)" % ord(bad)), None
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            return self._refused(url, "URL is malformed (%s)" % exc), None
        cfg = self.config
        # 1. scheme
        scheme = parts.scheme.lower()
        if not scheme:
            return self._refused(url, "URL has no scheme"), None
        reason = _glance_rule(
            "scheme",
            repr(scheme),
            ", ".join(cfg.allowed_schemes) or None,
            scheme in self._schemes_allowed,
            scheme in self._schemes_denied,
        )
        if reason:
            return self._refused(url, reason), None
        # 2. host
        if "@" in parts.netloc:
            # user@host confuses people and parsers alike about which host is meant.
            return self._refused(url, "URL contains userinfo (user@host), which is not accepted"), None
        if "%" in parts.netloc:
            return self._refused(url, "URL host is percent-encoded, which is not accepted"), None
        raw_host, port_text = _split_netloc(parts.netloc)
        if not raw_host:
            return self._refused(url, "URL has no host"), None
        parsed = _parse_host(raw_host)
        if isinstance(parsed, str):
            return self._refused(url, parsed), None
        host, literal = parsed
        if literal is None and host in METADATA_NAMES and host not in self._hosts_allowed.names:
            return self._refused(url, "host %s is a cloud metadata service" % host), None
        reason = _glance_rule(
            "host",
            host,
            self._hosts_allowed.shown or None,
            self._hosts_allowed.matches(host, literal),
            self._hosts_denied.matches(host, literal),
        )
        if reason:
            return self._refused(url, reason), None
        # 3. port, only when the URL names one
        port = DEFAULT_PORTS.get(scheme, 0)
        if port_text is not None:
            if not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:
                return self._refused(url, "port %s is not a valid port (1-65535)" % port_text), None
            port = int(port_text)
            reason = _glance_rule(
                "port",
                str(port),
                ", ".join(map(str, cfg.allowed_ports)) or None,
                port in cfg.allowed_ports,
                port in cfg.disallowed_ports,
            )
            if reason:
                return self._refused(url, reason), None
        shown_host = "[%s]" % host if isinstance(literal, ipaddress.IPv6Address) else host
        normalized = "%s://%s%s%s%s" % (
            scheme,
            shown_host,
            "" if port_text is None else ":%d" % port,
            parts.path or "/",
            "?" + parts.query if parts.query else "",
        )
        addresses = (host,) if literal is not None else ()
        return Decision(True, "accepted", normalized, host, port, addresses), literal

    def _check_addresses(self, decision: Decision, addresses: list[IPAddress], by_name: bool) -> Decision:
        # Listing the host name exempts its addresses: the operator vouched for that name's DNS.
        name_listed = by_name and decision.host in self._hosts_allowed.names
        subject = ("host %s resolves to" if by_name else "host %s is") % decision.host
        for addr in addresses:
            embedded = _embedded_v4(addr)
            target = addr if embedded is None else embedded[0]
            details = [str(addr)] if by_name else []
            if embedded is not None:
                details.append("IPv4 %s in %s form" % (target, embedded[1]))
            # A literal's forms are the client's own text; what DNS answered is only logged.
            text = " (%s)" % ", ".join(details) if details else ""
            shown, private = ("", text) if by_name else (text, "")
            if target in METADATA_ADDRESSES:
                if self._hosts_allowed.names_exactly(addr):
                    continue
                return self._refused(
                    decision.url, "%s a cloud metadata address%s" % (subject, shown), decision, private
                )
            kind = _classify(target)
            if kind and not (name_listed or self._hosts_allowed.covers(addr)):
                return self._refused(decision.url, "%s %s address%s" % (subject, kind, shown), decision, private)
            if not self._hosts_allowed and self._hosts_denied.covers(addr):
                return self._refused(
                    decision.url, "%s an address in disallowed_hosts%s" % (subject, shown), decision, private
                )
        return Decision(True, "accepted", decision.url, decision.host, decision.port, tuple(str(a) for a in addresses))


def _split_netloc(netloc: str) -> tuple[str, str | None]:
    """(host, port text or None); an unbracketed host may not contain ':'."""
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            return netloc, None
        host, rest = netloc[: end + 1], netloc[end + 1 :]
        if rest and not rest.startswith(":"):
            return netloc, None  # garbage after ']' makes _parse_host refuse the whole thing
        return host, rest[1:] if rest else None
    host, sep, port = netloc.rpartition(":")
    if not sep:
        return netloc, None
    return host, port
