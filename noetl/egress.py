"""Where HTTP tools and script sources may connect: an egress policy (pure, no I/O).

A destination is a host name and the addresses it resolved to. It is refused when:
- an entry of the deny list (`NOETL_HTTP_DENY`, plus the built-in ranges below) matches the
  host name or any of its addresses, unless an allow entry matches it explicitly; or
- an allow list is set (`NOETL_HTTP_ALLOW`) and no entry of it matches.
Entries are CIDRs (`10.0.0.0/8`, `::1/128`), single addresses, host names
(`api.example.com`) or suffixes (`*.example.com`). The built-in denials are the link-local
ranges, where cloud metadata services answer (169.254.169.254 and its IPv6 and vendor
variants): a playbook must not read the runner's cloud credentials. Loopback is allowed by
default (local development); deployments deny it (the Helm chart does).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import msgspec

from noetl.errors import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

BUILTIN_DENY: tuple[str, ...] = (
    "169.254.0.0/16",  # IPv4 link-local: AWS, GCP, Azure, OpenStack metadata
    "fe80::/10",  # IPv6 link-local
    "fd00:ec2::254/128",  # AWS metadata over IPv6
    "100.100.100.200/32",  # Alibaba Cloud metadata
    "metadata.google.internal",
    "metadata",
)


class _Entries(msgspec.Struct, frozen=True):
    networks: tuple[IPNetwork, ...]
    hosts: frozenset[str]
    suffixes: tuple[str, ...]

    @classmethod
    def parse(cls, entries: Iterable[str], setting: str) -> _Entries:
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        suffixes: list[str] = []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            if entry.startswith("*."):
                suffixes.append(entry[1:])
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if "/" in entry or ":" in entry:
                    raise ConfigError(
                        f"{setting}: `{raw.strip()}` is neither a CIDR, an address nor a host name"
                    ) from None
                hosts.add(entry.rstrip("."))
        return cls(tuple(networks), frozenset(hosts), tuple(suffixes))

    def matches(self, host: str, addresses: Iterable[IPAddress]) -> str | None:
        """The entry that matches the host or one of its addresses, as text, else None."""
        name = host.lower().rstrip(".")
        if name in self.hosts:
            return name
        for suffix in self.suffixes:
            if name.endswith(suffix):
                return f"*{suffix}"
        for address in addresses:
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
            for network in self.networks:
                if address.version == network.version and address in network:
                    return str(network)
        return None


class EgressPolicy(msgspec.Struct, frozen=True):
    """The allow and deny lists; `check` says why a destination is refused, or None."""

    deny: _Entries
    allow: _Entries
    allow_only: bool

    @classmethod
    def from_settings(cls, deny: str = "", allow: str = "") -> EgressPolicy:
        """The policy of `NOETL_HTTP_DENY` and `NOETL_HTTP_ALLOW` (comma-separated entries)."""
        allowed = [entry for entry in allow.split(",") if entry.strip()]
        return cls(
            deny=_Entries.parse([*BUILTIN_DENY, *deny.split(",")], "NOETL_HTTP_DENY"),
            allow=_Entries.parse(allowed, "NOETL_HTTP_ALLOW"),
            allow_only=bool(allowed),
        )

    def check(self, host: str, addresses: Iterable[IPAddress] = ()) -> str | None:
        """None when `host` (and the addresses it resolved to) may be reached, else why not."""
        addresses = list(addresses)
        literal = _address(host)
        if literal is not None:
            addresses.append(literal)
        if self.allow.matches(host, addresses) is not None:
            return None
        denied = self.deny.matches(host, addresses)
        if denied is not None:
            shown = ", ".join(str(a) for a in addresses) or host
            return f"{host} ({shown}) is denied by the egress policy (matches {denied})"
        if self.allow_only:
            return f"{host} is not in the egress allow list (NOETL_HTTP_ALLOW)"
        return None


def _address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def parse_address(text: str) -> IPAddress:
    """An address as the resolver gives it (IPv6 zone suffixes dropped)."""
    return ipaddress.ip_address(text.split("%", 1)[0])
