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

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

import tldextract

from flipcommon.storage import exists, read_json, url_join, write_json_atomic

SPREAD_FILE = "domain_spread.json"

# The bundled snapshot only: no download, no cache directory.
_EXTRACT = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


@functools.lru_cache(maxsize=1 << 16)
def registrable_domain(host: str) -> str:
    """``a.b.example.co.uk`` → ``example.co.uk``; an IP or ``localhost`` stays as it is."""
    host = host.strip("[]").rstrip(".").lower()
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    return _EXTRACT(host).top_domain_under_public_suffix or host


def domain_of_url(url: str | None) -> str:
    """The registrable domain of a URL's host; "" when it has none (bad URLs fail later)."""
    try:
        host = urlsplit(url or "").hostname
    except ValueError:
        return ""
    return registrable_domain(host) if host else ""


def interleave_by_domain(items: Iterable[tuple[int, str]]) -> list[tuple[int, str]]:
    """Reorder (index, url) pairs round-robin over their domains, first-seen order kept inside
    each domain: the task's threads then work on as many sites at once as the shard holds,
    instead of queueing on one site's URLs that the URL list keeps together."""
    queues: dict[str, list[tuple[int, str]]] = {}
    for item in items:
        queues.setdefault(domain_of_url(item[1]), []).append(item)
    ranked = [
        (rank, position, item)
        for position, queue in enumerate(queues.values())
        for rank, item in enumerate(queue)
    ]
    return [item for _, _, item in sorted(ranked, key=lambda r: (r[0], r[1]))]


def write_spread(
    url_list: str, spread: Mapping[str, int], urls: Mapping[str, int] | None = None
) -> None:
    record = {"spread": dict(sorted(spread.items())), "urls": dict(sorted((urls or {}).items()))}
    write_json_atomic(url_join(url_list, SPREAD_FILE), record)


@functools.lru_cache(maxsize=4)
def load_spread(url_list: str) -> Mapping[str, int]:
    """The spread recorded beside a URL list; empty (every domain in one shard) without one,
    e.g. for a URL list that was not written by ``pipeline.url_shards``."""
    return _spread_file(url_list).get("spread", {})


def load_site_urls(url_list: str) -> Mapping[str, int]:
    """The URL count of each multi-shard domain of a URL list (empty for an older list)."""
    return _spread_file(url_list).get("urls", {})


def _spread_file(url_list: str) -> dict:
    path = url_join(url_list, SPREAD_FILE)
    return read_json(path) if exists(path) else {}
