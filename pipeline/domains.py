"""Registrable domains: the unit of politeness, and how a shard's URLs are spread over them.

Politeness is per site, not per host name: ``img1.example.com`` and ``img2.example.com`` are
one operator's servers. The registrable domain (the public suffix plus one label, from the
Public Suffix List snapshot that tldextract ships; never fetched at run time) names the site; an
IP address or a single-label host stands for itself.

The URL list puts one domain's URLs in few shards, or a large one over the whole list
(``pipeline.url_shards``, ``pipeline.site_placement``), and records, for each domain that spans
several shards, how many (its *spread*) and how many URLs it has. A task paces a domain at
``per_domain_interval_s × min(spread, tasks that can run at once)``, so however many of those
shards run at once, the domain sees at most one request per ``per_domain_interval_s`` from the
whole cluster (``pipeline.shard_download.SitePacing``).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import socket
from collections.abc import Mapping
from urllib.parse import urlsplit

import tldextract

from flipcommon.storage import exists, read_json, url_join, write_json_atomic

SPREAD_FILE = "domain_spread.json"
SITE_URLS_FILE = "domain_urls.json"

# The bundled snapshot only: no download, no cache directory.
_EXTRACT = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


@functools.lru_cache(maxsize=1 << 16)
def registrable_domain(host: str) -> str:
    """``a.b.example.co.uk`` → ``example.co.uk``; an IP or ``localhost`` stays as it is.

    The host is first brought to the form the resolver is asked for, so spellings of one
    server are one site: IDNA (Python encodes a non-ASCII name so before resolving it; that
    folds case and full-width letters and drops soft hyphens and zero-width characters) and
    the canonical address for every IP form the resolver accepts (``2130706433``, ``0x7f.1``,
    ``127.000.0.1`` are 127.0.0.1; ``2001:db8:0::1`` is ``2001:db8::1``)."""
    host = host.strip("[]").rstrip(".")
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:  # the legacy numeric forms getaddrinfo also accepts
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            pass
    # a name IDNA refuses, the fetch refuses too; grouping it as written is enough
    with contextlib.suppress(UnicodeError):
        host = host.encode("idna").decode("ascii")
    host = host.lower()
    return _EXTRACT(host).top_domain_under_public_suffix or host


def domain_of_url(url: str | None) -> str:
    """The registrable domain of a URL's host; "" when it has none (bad URLs fail later)."""
    try:
        host = urlsplit(url or "").hostname
    except ValueError:
        return ""
    return registrable_domain(host) if host else ""


def write_spread(
    url_list: str, spread: Mapping[str, int], urls: Mapping[str, int] | None = None
) -> None:
    """The spread, read by every task; the URL counts (``SITE_URLS_FILE``), read by the
    driver only, apart so tasks do not parse them."""
    write_json_atomic(
        url_join(url_list, SITE_URLS_FILE), {"urls": dict(sorted((urls or {}).items()))}
    )
    write_json_atomic(url_join(url_list, SPREAD_FILE), {"spread": dict(sorted(spread.items()))})


@functools.lru_cache(maxsize=4)
def load_spread(url_list: str) -> Mapping[str, int]:
    """The spread recorded beside a URL list; empty (every domain in one shard) without one,
    e.g. for a URL list that was not written by ``pipeline.url_shards``."""
    path = url_join(url_list, SPREAD_FILE)
    return read_json(path)["spread"] if exists(path) else {}


def load_site_urls(url_list: str) -> Mapping[str, int]:
    """The URL count of each multi-shard domain of a URL list (empty for an older list)."""
    path = url_join(url_list, SITE_URLS_FILE)
    return read_json(path)["urls"] if exists(path) else {}
