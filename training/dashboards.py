"""Where a person watches a run: TensorBoard event files in the run dir (local or remote) and,
when switched on, Weights & Biases (offline by default: no account, no network).

TensorBoard's writer and W&B's offline store write local files only. For a remote run dir
(s3://, gs://) both write to a local folder that is copied to the run dir as the run goes, so
a run on a cloud node is watched from anywhere that can read the bucket.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import fsspec

from flipcommon.storage import is_local, url_join

log = logging.getLogger(__name__)


def mirror_folder(local_dir: str, url: str) -> int:
    """Copy every file under ``local_dir`` to the same relative path under ``url``; returns how
    many. Each file goes whole, in one put (an object store shows the old copy or the new one,
    never half of one); event files are a few kB."""
    fs, root = fsspec.core.url_to_fs(url)
    copied = 0
    for path in sorted(Path(local_dir).rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{root.rstrip('/')}/{path.relative_to(local_dir).as_posix()}")
            copied += 1
    return copied


class TensorBoardLog:
    """Scalars as TensorBoard events under ``{run_dir}/tensorboard``. For a remote run dir the
    events are copied there at most every ``sync_every_s`` as scalars come, at every flush (each
    checkpoint) and at close. Event file names carry host, process and start time, so a resumed
    run adds a file and never overwrites one."""

    def __init__(self, run_dir: str, sync_every_s: float = 30.0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.url = url_join(run_dir, "tensorboard")
        self.remote = not is_local(self.url)
        self.sync_every_s = sync_every_s
        self.local_dir = tempfile.mkdtemp(prefix="flip-tensorboard-") if self.remote else self.url
        self.writer = SummaryWriter(self.local_dir)
        self.last_sync = time.monotonic()

    def add_scalars(self, scalars: dict[str, float], samples_seen: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(f"train/{key}", value, samples_seen)
        if self.remote and time.monotonic() - self.last_sync >= self.sync_every_s:
            self.flush()

    def flush(self) -> None:
        self.writer.flush()
        if self.remote:
            self._sync()

    def close(self) -> None:
        self.writer.close()
        if self.remote:
            self._sync()
            shutil.rmtree(self.local_dir, ignore_errors=True)

    def _sync(self) -> None:
        # A store that is briefly unreachable must not stop a training run for its dashboard:
        # the local file keeps every event, and the next sync copies it whole.
        try:
            mirror_folder(self.local_dir, self.url)
        except Exception as exc:  # noqa: BLE001 - any storage error; training goes on
            log.warning(
                "could not copy TensorBoard events to %s (retried later): %s", self.url, exc
            )
        self.last_sync = time.monotonic()


class WandbLog:
    """The same scalars to Weights & Biases. ``mode`` "offline" (the default) writes the run to
    ``{run_dir}/wandb/`` (for a remote run dir: a local folder copied there at close), to be
    uploaded later with ``wandb sync``; "online" needs an account (``WANDB_API_KEY``)."""

    def __init__(self, run_dir: str, project: str, mode: str, config: dict[str, Any]) -> None:
        import wandb

        self.url = url_join(run_dir, "wandb")
        self.remote = not is_local(run_dir)
        self.local_dir = tempfile.mkdtemp(prefix="flip-wandb-") if self.remote else run_dir
        Path(self.local_dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project, mode=mode, dir=self.local_dir, config=config, reinit="create_new"
        )

    def add_scalars(self, scalars: dict[str, float], step: int) -> None:
        self.run.log({f"train/{key}": value for key, value in scalars.items()}, step=step)

    def close(self) -> None:
        self.run.finish()
        if self.remote:
            mirror_folder(str(Path(self.local_dir) / "wandb"), self.url)
            shutil.rmtree(self.local_dir, ignore_errors=True)
