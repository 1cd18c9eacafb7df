"""SLURM: training as one multi-node batch script (srun runs torchrun once per node), the
evaluation array, and a submit script that chains them."""

from __future__ import annotations

import re
import shlex

from flipcommon.config import ConfigError
from infra.render.commands import HEADER, eval_command, shell_word, torchrun
from infra.render.deploy import Deploy, SlurmDeploy

# near the time limit: SIGTERM to every step's processes on every node (not the batch shell)
STOP_STEPS = 'trapped=1; stopping="time limit"; scancel --signal=TERM "$SLURM_JOB_ID" || true'

# sbatch reads an #SBATCH line's value up to whitespace and does not unquote it
SBATCH_VALUE = re.compile(r"[A-Za-z0-9._:+=-]+")


def _slurm(d: Deploy) -> SlurmDeploy:
    if d.slurm is None:
        raise ConfigError("deploy.yaml has no slurm section")
    for name, value in (
        ("train.run_name", d.train.run_name),
        ("slurm.partition", d.slurm.partition),
        ("slurm.time", d.slurm.time),
    ):
        if not SBATCH_VALUE.fullmatch(value):
            raise ConfigError(
                f"{name}={value!r}: an #SBATCH value is letters, digits and . _ : + = - only"
            )
    return d.slurm


def time_limit_s(value: str) -> int | None:
    """An sbatch --time in seconds ("minutes", "MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM",
    "D-HH:MM:SS"); None for what it cannot read (UNLIMITED, INFINITE)."""
    days, _, clock = value.rpartition("-") if "-" in value else ("", "", value)
    parts = clock.split(":")
    if not all(p.isdigit() for p in parts) or (days and not days.isdigit()) or len(parts) > 3:
        return None
    numbers = [int(p) for p in parts]
    if days:  # D-HH[:MM[:SS]]
        numbers += [0] * (3 - len(numbers))
        hours, minutes, seconds = numbers
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if len(numbers) == 1:  # minutes
        return numbers[0] * 60
    if len(numbers) == 2:  # MM:SS
        return numbers[0] * 60 + numbers[1]
    hours, minutes, seconds = numbers
    return (hours * 60 + minutes) * 60 + seconds


def train(d: Deploy) -> str:
    t, s = d.train, _slurm(d)
    limit, lead = time_limit_s(s.time), t.stop_grace_s + 120
    if limit is not None and limit <= 2 * lead:
        raise ConfigError(
            f"slurm.time={s.time}: the job is signalled {lead} s before its time limit "
            f"(train.stop_grace_s + 120 s) to checkpoint and requeue; a limit of {limit} s "
            "leaves too little training between requeues"
        )
    command = torchrun(d, "$SLURM_NODEID", "$MASTER_ADDR")
    return (
        "#!/bin/bash\n"
        + HEADER
        + f"#SBATCH --job-name={t.run_name}\n"
        + f"#SBATCH --partition={s.partition}\n"
        + f"#SBATCH --nodes={t.nodes}\n"
        + "#SBATCH --ntasks-per-node=1\n"
        + f"#SBATCH --gpus-per-node={t.gpus_per_node}\n"
        + f"#SBATCH --cpus-per-task={s.cpus_per_task}\n"
        + f"#SBATCH --time={s.time}\n"
        + "#SBATCH --requeue\n"
        # Slurm may signal up to 60 s early; the trainer needs stop_grace_s from SIGTERM on
        + f"#SBATCH --signal=B:USR1@{lead}\n"
        + "# Near the time limit Slurm sends this script USR1: every rank gets SIGTERM,\n"
        + "# checkpoints at one agreed step and leaves, and the job requeues itself to resume\n"
        + "# from there (resume=true). Preempted, Slurm signals the ranks and requeues the job\n"
        + "# itself (the partition's GraceTime is their time to checkpoint). A rank that fails\n"
        + "# stops the whole step at once (--kill-on-bad-exit): nobody waits out a timeout.\n"
        + "set -euo pipefail\n"
        + 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)\n'
        + "export MASTER_ADDR NCCL_DEBUG=WARN TORCH_NCCL_ASYNC_ERROR_HANDLING=1\n"
        + "# Submit from the project root, its environment active (or run inside the gpu image).\n"
        + 'cd "$SLURM_SUBMIT_DIR"\n'
        + 'stopping=""\n'
        + "# time limit: SIGTERM to every step's processes (not this shell)\n"
        + f"trap {shlex.quote(STOP_STEPS)} USR1\n"
        + "trap 'trapped=1' TERM  # preempted or cancelled: Slurm signals the steps itself\n"
        + "# single quotes on purpose: srun's bash expands the variables on each node\n"
        + "# shellcheck disable=SC2016\n"
        + "srun --kill-on-bad-exit=1 bash -c "
        + shlex.quote(" ".join(shell_word(a) for a in command))
        + " &\n"
        + "step=$!\n"
        + "while :; do  # a trap ends a wait early (status > 128): wait again for the step's own\n"
        + '    trapped=""\n'
        + "    status=0\n"
        + '    wait "$step" || status=$?\n'
        + '    if [ -z "$trapped" ] || [ "$status" -le 128 ]; then break; fi\n'
        + "done\n"
        + 'if [ -n "$stopping" ]; then\n'
        + '    echo "training stopped ($stopping; step exit $status): requeued, to resume"\n'
        + '    scontrol requeue "$SLURM_JOB_ID"\n'
        + "    exit 0\n"
        + "fi\n"
        + 'exit "$status"\n'
    )


def evaluation(d: Deploy) -> str:
    e, s = d.eval, _slurm(d)
    return (
        "#!/bin/bash\n"
        + HEADER
        + "#SBATCH --job-name=flip-eval\n"
        + f"#SBATCH --partition={s.partition}\n"
        + f"#SBATCH --array=0-{e.checkpoints - 1}\n"
        + "#SBATCH --gpus=1\n"
        + f"#SBATCH --time={s.time}\n"
        + "set -euo pipefail\n"
        + 'cd "$SLURM_SUBMIT_DIR"\n'
        + " ".join(shlex.quote(a) for a in eval_command(d, "SLURM_ARRAY_TASK_ID"))
        + "\n"
    )


def submit(d: Deploy) -> str:
    return (
        "#!/bin/sh\n"
        + HEADER
        + "# Training, then the evaluation array once training has succeeded (afterok). The\n"
        + "# shard set comes first, from the pipeline on a Spark cluster (see the other folders).\n"
        + "# Run from the project root.\n"
        + "set -eu\n"
        + "TRAIN_JOB=$(sbatch --parsable infra/generated/slurm/train.sbatch)\n"
        + 'sbatch --dependency="afterok:${TRAIN_JOB%%;*}" infra/generated/slurm/eval-array.sbatch\n'
    )
