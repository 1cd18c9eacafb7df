"""The explorer's config: which shard set, which model, where the index goes, which port."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Annotated

from flipcommon.config import Check, Range


def listen_address(host: str) -> None:
    if host != "localhost":
        ipaddress.ip_address(host)


@dataclass
class ExploreConfig:
    shards: str  # a finished shard set (a local folder: clip-retrieval reads the tars by path)
    out_dir: str  # embeddings/, images/, index/ and indices_paths.json
    # a checkpoint folder, or open_clip:NAME@WEIGHTS (any open_clip model, local weights);
    # "" = the newest checkpoint of train_run_dir
    model: str = ""
    train_run_dir: str = ""
    # Where the explorer listens. Loopback: this machine only; from another, tunnel
    # (ssh -L 1234:127.0.0.1:1234 HOST). 0.0.0.0 serves every sample's image and caption to
    # anyone who can reach the port, without authentication.
    host: Annotated[str, Check(listen_address, "an IP address or localhost")] = "127.0.0.1"
    # Exposed (host not loopback): the HOST:PORT names browsers reach it by, e.g.
    # [gpu-box.internal:1234]; requests naming any other Host are refused (DNS rebinding).
    allowed_hosts: list[str] = field(default_factory=list)
    port: Annotated[int, Range(1, 65535)] = 1234
    serve: bool = True  # false: build the index and stop
    batch_size: Annotated[int, Range(1)] = 64  # inference batch
    workers: int = 2  # inference's image decoding processes
    max_index_memory: str = "4G"  # autofaiss's budget for the index
    available_memory: str = "16G"  # autofaiss: memory it may use while building
    example_query: str = "a red apple"  # printed with the address
