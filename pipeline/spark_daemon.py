"""PySpark's worker daemon, less two per-task costs that many short tasks add up.

Before every task PySpark's worker calls ``importlib.invalidate_caches()``, which makes each
zip archive on ``sys.path`` read its whole directory again. Spark puts three archives there —
``pyspark.zip``, py4j's zip and the ``spark-core`` jar (thousands of entries) — and reading
them costs ~110 ms of CPU per task (measured on this project's 2-core machine: a trivial task
took 63 ms of wall time on ``local[2]``, nearly all of it there). When those archives lie inside
the pyspark package that is installed anyway, they duplicate it: this daemon drops them from
``sys.path`` (the forked workers inherit it) and then runs PySpark's own daemon unchanged.
Archives of any other Spark installation (a cluster's own SPARK_HOME) are left alone.
Selected by ``spark.python.daemon.module`` (``pipeline.spark_session``).

The daemon also runs a full ``gc.collect()`` in a reused worker after every task, which walks
every object the worker holds: after the imports of a shard task (img2dataset, OpenCV, torch via
albumentations) ~70 ms of CPU per task (measured). ``freeze_imported_objects`` moves what exists
after those imports into the collector's permanent generation once per worker, so each
collection walks only what the tasks made since.
"""

from __future__ import annotations

import gc
import os
import runpy
import sys

_frozen = False


def freeze_imported_objects() -> None:
    """Call at the start of a task, once its modules are imported: the first call in a worker
    collects, then freezes everything alive (module state, kept for the worker's life); later
    calls do nothing."""
    global _frozen
    if not _frozen:
        gc.collect()
        gc.freeze()
        _frozen = True


def installed_pyspark_dir() -> str | None:
    """The directory of a pyspark installed as a package on ``sys.path``, if any."""
    for entry in sys.path:
        if (
            entry
            and os.path.isdir(entry)
            and os.path.isfile(os.path.join(entry, "pyspark", "__init__.py"))
        ):
            return os.path.realpath(os.path.join(entry, "pyspark"))
    return None


def installed(package: str, path: list[str]) -> bool:
    """Whether ``package`` is installed as a directory somewhere on ``path``."""
    return any(
        entry and os.path.isfile(os.path.join(entry, package, "__init__.py")) for entry in path
    )


def without_bundled_archives(path: list[str], pyspark_dir: str | None) -> list[str]:
    """``path`` less the archives (zip, jar) stored inside ``pyspark_dir``; py4j's archive only
    where py4j itself is installed too."""
    if pyspark_dir is None:
        return list(path)
    inside = pyspark_dir + os.sep
    keep_py4j = not installed("py4j", path)

    def bundled(entry: str) -> bool:
        if not (os.path.isfile(entry) and os.path.realpath(entry).startswith(inside)):
            return False
        return not (keep_py4j and os.path.basename(entry).startswith("py4j"))

    return [entry for entry in path if not bundled(entry)]


def drop_bundled_archives() -> None:
    kept = without_bundled_archives(sys.path, installed_pyspark_dir())
    dropped = [entry for entry in sys.path if entry not in kept]
    sys.path[:] = kept
    # invalidate_caches() walks the importer cache, not sys.path: forget their importers too
    for key in list(sys.path_importer_cache):
        if any(key == entry or key.startswith(entry + os.sep) for entry in dropped):
            del sys.path_importer_cache[key]


if __name__ == "__main__":
    from pipeline.malloc_tuning import bound_malloc

    bound_malloc()  # before any thread exists: the workers it forks inherit the settings
    drop_bundled_archives()
    runpy.run_module("pyspark.daemon", run_name="__main__", alter_sys=True)
