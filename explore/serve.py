"""Serve the index with clip-retrieval's back-end resources and its bundled front end, behind
guards of our own.

clip-retrieval's ``clip_back`` listens on every interface, answers any origin (CORS), fetches
any ``image_url`` a request names and returns as many results as asked. Here the same
resources (its k-NN and metadata services, its front end) are mounted on an app that:

- listens on ``host`` (127.0.0.1 unless the config says otherwise);
- sends no CORS headers, refuses a request whose ``Origin`` is not the page's own, and one
  whose ``Host`` is not a name it is reached by (a rebinding DNS name would pass the origin
  check): the loopback names, or those listed in ``allowed_hosts`` when exposed;
- never fetches a URL: a query by ``image_url`` is refused (a query by an uploaded image or by
  text works);
- caps results per request and request bodies, and does not send the server's file paths.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from pathlib import Path
from typing import Any

from PIL import Image

log = logging.getLogger(__name__)

# what the back end returns per result: the image file (inlined by the back end), the caption,
# the sample's key; no "url" column, so the front end shows the inlined image, not the source
COLUMNS = ["image_path", "caption", "key"]
INDEX_NAME = "shards"
MAX_RESULTS = 1_000  # per request: results, result ids, metadata ids
MAX_REQUEST_BYTES = 16 << 20  # a query image, base64
MAX_QUERY_PIXELS = 40_000_000


def write_indices_paths(out_dir: Path, index: Path) -> Path:
    path = out_dir / "indices_paths.json"
    path.write_text(json.dumps({INDEX_NAME: str(index)}))
    return path


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address or "localhost") is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_port(host: str, port: int) -> str:
    """``host:port`` as a browser writes it in its Host header (IPv6 in brackets, no :80)."""
    name = f"[{host}]" if ":" in host else host
    return name if port == 80 else f"{name}:{port}"


def allowed_hosts(host: str, port: int, extra: list[str] = ()) -> set[str]:
    """The ``Host`` headers a request may carry: the listening address, the loopback names
    when it listens on loopback, and the names in ``extra`` (how browsers reach an exposed
    explorer). Any other Host is a page whose DNS name was rebound to this machine."""
    hosts = {host_port(host, port), *extra}
    if is_loopback(host):
        hosts |= {host_port(name, port) for name in ("127.0.0.1", "localhost", "::1")}
    return hosts


def request_refusal(headers: Any, hosts: set[str]) -> str | None:
    """Why a request must be refused, or None. ``headers``: the request's headers."""
    host = headers.get("Host", "")
    if host not in hosts:
        return f"unexpected Host {host!r}"
    origin = headers.get("Origin")
    if origin is not None and origin != f"http://{host}":
        return f"cross-origin request from {origin!r}"
    return None


def checked_image(data: str) -> None:
    """An uploaded query image: a JPEG, PNG or WebP of at most ``MAX_QUERY_PIXELS``, checked
    from its header before the back end decodes it."""
    import base64
    import io

    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(data)), formats=["JPEG", "PNG", "WEBP"]) as image:
        if image.width * image.height > MAX_QUERY_PIXELS:
            raise ValueError(f"query image over {MAX_QUERY_PIXELS:,} pixels")


def capped_query(query: dict[str, Any]) -> dict[str, Any]:
    """A k-NN query as the back end may run it: no URL to fetch, bounded result counts, an
    uploaded image only of a common format and size."""
    if query.get("image_url"):
        raise ValueError("queries by image_url are off: the explorer fetches no URL")
    if query.get("image"):
        try:
            checked_image(query["image"])
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise ValueError(f"query image refused: {err}") from err
    capped = dict(query)
    for field in ("num_images", "num_result_ids"):
        if field in capped:
            capped[field] = max(1, min(int(capped[field]), MAX_RESULTS))
    return capped


def chosen_index(name: str | None, names: list[str]) -> str:
    """The index a query asks for. The front end, opened with ``?query=`` (a shared link), can
    send its first query before it has the list of indices, with no name: the explorer serves
    one index, so that is the one. An unknown name is the query's error, not the server's."""
    if not name and len(names) == 1:
        return names[0]
    if name not in names:
        raise ValueError(f"no index {name!r}; the explorer serves {names}")
    return name


def without_paths(meta: dict[str, Any]) -> dict[str, Any]:
    """A result without the server's file path (its image is inlined already)."""
    return {k: v for k, v in meta.items() if k != "image_path"}


def make_app(
    indices_paths: Path, clip_model: str, host: str, port: int, extra_hosts: list[str] = ()
):
    """The Flask app: clip-retrieval's resources, our guards."""
    from clip_retrieval.clip_back import (
        ClipOptions,
        IndicesList,
        KnnService,
        MetadataService,
        load_clip_indices,
    )
    from clip_retrieval.clip_front import add_static_endpoints
    from flask import Flask, abort, request
    from flask_restful import Api

    clip_resources = load_clip_indices(
        indices_paths=str(indices_paths),
        clip_options=ClipOptions(
            indice_folder="",
            clip_model=clip_model,
            enable_hdf5=False,
            enable_faiss_memory_mapping=False,
            columns_to_return=COLUMNS,
            reorder_metadata_by_ivf_index=False,
            # options that would fetch models from the internet are off
            enable_mclip_option=False,
            use_jit=False,
            use_arrow=False,
            provide_safety_model=False,
            provide_violence_detector=False,
            provide_aesthetic_embeddings=False,
        ),
    )

    class GuardedKnn(KnnService):
        def post(self):
            try:
                query = capped_query(request.get_json(force=True))
                index = chosen_index(query.get("indice_name"), list(clip_resources))
            except (TypeError, ValueError, AttributeError) as err:
                abort(400, str(err))
            results = self.query(
                query.get("text"),
                query.get("image"),
                None,
                query.get("embedding_input"),
                query.get("modality", "image"),
                query.get("num_images", 40),
                query.get("num_result_ids", query.get("num_images", 40)),
                index,
                False,
                bool(query.get("deduplicate", False)),
                False,
                False,
                None,
                None,
            )
            return [without_paths(result) for result in results]

    class GuardedMetadata(MetadataService):
        def post(self):
            query = request.get_json(force=True)
            if not isinstance(query, dict) or len(query.get("ids", [])) > MAX_RESULTS:
                abort(400, f"at most {MAX_RESULTS} ids")
            answer = super().post()
            return [{**item, "metadata": without_paths(item["metadata"])} for item in answer]

    app = Flask("explore")
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    hosts = allowed_hosts(host, port, extra_hosts)

    @app.before_request
    def refuse_foreign_requests():
        refusal = request_refusal(request.headers, hosts)
        if refusal is not None:
            log.warning("refused: %s", refusal)
            abort(403, refusal)

    add_static_endpoints(app, None, None, "url")
    api = Api(app)
    api.add_resource(
        IndicesList, "/indices-list", resource_class_kwargs={"indices": list(clip_resources)}
    )
    api.add_resource(
        GuardedMetadata, "/metadata", resource_class_kwargs={"clip_resources": clip_resources}
    )
    api.add_resource(
        GuardedKnn, "/knn-service", resource_class_kwargs={"clip_resources": clip_resources}
    )
    return app


def serve(
    indices_paths: Path, clip_model: str, host: str, port: int, extra_hosts: list[str] = ()
) -> None:
    """Blocks until interrupted."""
    app = make_app(indices_paths, clip_model, host, port, extra_hosts)
    app.run(host=host, port=port, debug=False, threaded=True)
