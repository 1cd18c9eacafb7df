"""A download task's lane, leased per executor slot (pipeline.task_lanes): a finished task's
lane goes to the next task of its executor, however the task ended, and a Spark job's tasks
in local[2] share the first wave's two lanes."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from pipeline.task_lanes import LANES_FOLDER, lease_lane, registered_lanes


def test_the_first_wave_registers_its_ids_and_later_tasks_take_the_freed_lanes(tmp_path):
    first, second = lease_lane(tmp_path, 0), lease_lane(tmp_path, 1)
    assert (first.lane, second.lane) == (0, 1) and first.registered and second.registered
    first.release()
    with lease_lane(tmp_path, 7) as lane:  # task 7 starts in the slot task 0 left
        assert lane == 0
        # while both lanes are held, a new slot (an executor's extra core) registers its own
        with lease_lane(tmp_path, 8) as extra:
            assert extra == 8
    assert registered_lanes(tmp_path) == [0, 1, 8]
    second.release()


def test_a_lane_comes_back_when_its_task_is_killed(tmp_path):
    """The lock dies with the process holding it: a worker killed with -9 leaks no lane."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from pipeline.task_lanes import lease_lane
                lease = lease_lane(Path({str(tmp_path)!r}), 5)
                print(lease.lane, flush=True)
                time.sleep(600)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "5"
        with lease_lane(tmp_path, 9) as lane:
            assert lane == 9  # lane 5 is held by the running task
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with lease_lane(tmp_path, 10) as lane:
        assert lane == 5


def test_an_unusable_folder_leaves_the_task_its_own_lane(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    lease = lease_lane(blocked, 3)
    assert lease.lane == 3 and not lease.registered
    assert lease_lane(None, 4).lane == 4
    with pytest.raises(ValueError):
        lease_lane(tmp_path, -1)


def test_names_that_are_not_lanes_are_ignored(tmp_path):
    for name in ("x.lane", "-1.lane", "²3.lane", "12.lock", "4.lane"):
        (tmp_path / name).write_text("")
    assert registered_lanes(tmp_path) == [4]


def _task_lane(_):
    import time

    from pyspark import TaskContext

    from pipeline.task_lanes import executor_lanes_folder, lease_lane

    folder = executor_lanes_folder()
    with lease_lane(folder, TaskContext.get().partitionId()) as lane:
        time.sleep(0.2)  # the two slots' tasks overlap
        return [(lane, str(folder))]


def test_a_spark_jobs_tasks_keep_to_the_first_waves_lanes(spark):
    """local[2]: two task slots. Twelve tasks, one after another in each slot, hold two lanes
    between them: the first two register theirs (or take those an earlier job of this Spark
    application left), every later one takes a lane a finished task gave back."""
    from pathlib import Path

    from pipeline.task_lanes import executor_lanes_folder

    assert executor_lanes_folder() is None  # the driver is not a task
    rdd = spark.sparkContext.parallelize(range(12), 12)
    lanes = rdd.mapPartitions(_task_lane).collect()
    folders = {folder for _, folder in lanes}
    assert len(folders) == 1
    folder = Path(folders.pop())
    assert folder.name == LANES_FOLDER
    # free lanes are taken lowest first: two slots never need more than the two lowest
    assert {lane for lane, _ in lanes} == set(registered_lanes(folder)[:2])


def test_tasks_that_start_together_never_share_a_lane(tmp_path):
    """Sixteen tasks leasing at once, then sixteen more after the first half gave theirs back:
    every lease distinct and registered (the registry lock orders them)."""
    import threading

    barrier = threading.Barrier(16)
    leases = [None] * 16

    def task(index: int) -> None:
        barrier.wait()
        leases[index] = lease_lane(tmp_path, index)

    threads = [threading.Thread(target=task, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(lease.lane for lease in leases) == list(range(16))
    assert all(lease.registered for lease in leases)
    for lease in leases[:8]:
        lease.release()
    later = [lease_lane(tmp_path, 100 + i) for i in range(8)]
    assert sorted(lease.lane for lease in later) == sorted(lease.lane for lease in leases[:8])
    for lease in later + leases[8:]:
        lease.release()


def test_a_lane_file_that_is_a_link_is_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    folder = tmp_path / "lanes"
    folder.mkdir()
    (folder / "0.lane").symlink_to(target)
    lease = lease_lane(folder, 0)
    assert lease.lane == 0 and not lease.registered and not target.exists()
