"""``python -m infra.render [--check] [--deploy FILE]``: (re)write ``infra/generated/``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flipcommon.errors import UserError
from infra.render.deploy import DEPLOY, load_deploy
from infra.render.files import GENERATED, render_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.render",
        description="Render every cloud-job file under infra/generated/ (Kubernetes, SLURM, "
        "AWS Batch, EMR, Dataproc) from the deploy config.",
    )
    parser.add_argument(
        "--check", action="store_true", help="compare, do not write: exit 1 if stale"
    )
    parser.add_argument(
        "--deploy", type=Path, default=DEPLOY, help="deploy config (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        files = render_all(load_deploy(args.deploy))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    stale = []
    for rel, text in files.items():
        path = GENERATED / rel
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(rel)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print("out of date (run `make manifests`): " + ", ".join(stale), file=sys.stderr)
        return 1
    print(("checked " if args.check else "wrote ") + f"{len(files)} files under {GENERATED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
