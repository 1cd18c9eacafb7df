"""``python -m explore CONFIG [key=value ...]``: search a shard set by text in a browser."""

from __future__ import annotations

from explore.config import ExploreConfig
from flipcommon.cli import run_stage, stage_parser

HELP = """\
Search a finished shard set by text, in a browser, with clip-retrieval: its own inference
embeds every image and caption with one of our checkpoints (or any open_clip model with local
weights), autofaiss indexes them, and `clip-retrieval back` serves the index with its bundled
front end. Type "a red apple": the shard set's matching images appear with their captions.

Writes out_dir/embeddings/ (clip-retrieval's img_emb/, text_emb/, metadata/), out_dir/images/
(each sample's image, which the back end inlines in its answers), out_dir/index/ (image.index,
text.index, metadata) and out_dir/indices_paths.json; each step is skipped when done, so a
rerun only serves. Then serves on host= (127.0.0.1: this machine only) and port= until Ctrl-C
(serve=false: build and stop). The page answers only its own origin, fetches no URL a query
names, and returns at most 1,000 results per query. To use it from another machine, keep it on
loopback and tunnel: ssh -L 1234:127.0.0.1:1234 HOST. host=0.0.0.0 allowed_hosts=[NAME:1234]
shows every sample's image and caption to anyone who can reach the port, without
authentication.

Model: model= a checkpoint folder or open_clip:NAME@WEIGHTS; empty: the newest checkpoint of
train_run_dir. The shard set must be a local folder (or a mount): clip-retrieval reads tars by
path. Scale: inference is one process (batch_size=, workers=); for a LAION-size set run
clip-retrieval's own distributed inference and point it at this layout.

Examples:
  python -m explore configs/explore/demo.yaml
  python -m explore configs/explore/demo.yaml model=runs/demo/train/checkpoints/step_00000200
  python -m explore configs/explore/demo.yaml serve=false
"""


def _run(config: ExploreConfig, _args) -> None:
    from explore.build import ExploreError, build, clip_model_name, resolve_model
    from explore.serve import host_port, is_loopback, serve, write_indices_paths

    model = resolve_model(config)
    clip_model = clip_model_name(model)
    index = build(config, clip_model)
    indices_paths = write_indices_paths(index.parent, index)
    if not config.serve:
        print(f"index ready: {index}")
        return
    query = config.example_query.replace(" ", "+")
    print(f"explore {config.shards} with {model}:")
    exposed = not is_loopback(config.host)
    if exposed and not config.allowed_hosts:
        raise ExploreError(
            f"host={config.host} exposes the explorer: name the HOST:PORT browsers will reach "
            "it by in allowed_hosts=[…] (other names are refused, against DNS rebinding)"
        )
    shown = config.allowed_hosts[0] if exposed else host_port(config.host, config.port)
    print(f"  open http://{shown}/?query={query}   (Ctrl-C stops)", flush=True)
    if exposed:
        print(f"  listening on {config.host}: anyone who reaches the port sees the shard set")
    serve(indices_paths, clip_model, config.host, config.port, config.allowed_hosts)


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("python -m explore", HELP, "model=PATH port=1234")
    from flipcommon.checkpoints import CheckpointError

    run_stage(parser, ExploreConfig, _run, argv, user_errors=(CheckpointError,))


if __name__ == "__main__":
    main()
