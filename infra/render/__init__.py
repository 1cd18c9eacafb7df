"""Render every cloud-job file under ``infra/generated/`` from ``infra/deploy.yaml``
(``python -m infra.render``, ``make manifests``).

The images' entry point is only ``tini``; each job's command is the whole command line, the same
entry point a user runs locally — ``python -m <stage> CONFIG key=value`` — with a config from
``configs/``; only storage URLs, sizes and the launcher around the command (spark-submit,
torchrun, the batch system) differ. Nothing here holds a credential: jobs get storage access
from the platform (service-account roles, job roles).

``deploy`` is the typed deploy config, ``commands`` the stage invocations every platform
wraps, and one module per platform builds its files; ``files`` puts them all together.
"""
