"""``emphatic-rl sweep STUDY --backend ray [--address ADDR]``: a study's population runs as Ray tasks.

The study is planned and validated on the driver exactly as by the local backend (``plan_study``,
``validate_study``, every variant's ``Run`` built before any training); the driver writes ``sweep.json`` and submits
one Ray task per unfinished chunk (one population run: a variant, or a chunk of its settings). Each task trains its
chunk in its worker process with ``run_study(study, out, only=[chunk.folder], record=False)`` -- the local backend's
own code: the same ``members.json``, ``metrics.csv``, ``checkpoint.pt``, ``done.json`` and excursion rows, so
``emphatic-rl report`` reads the folder unchanged and a chunk trained on Ray is bit-identical to one trained locally.

Failures. A task whose worker process dies (killed, out of memory, its node lost) is retried by Ray up to
``max_retries`` times; the retry resumes the chunk from its last checkpoint, as rerunning the local backend does. If
the driver dies, rerunning the same command skips the finished chunks (``done.json``) and resumes the others.

Requirements. Ray (``pip install 'emphatic-rl[ray]'``), emphatic-rl installed on every node, and ``--out`` on a
filesystem that every node sees (a shared or network filesystem): the tasks write into it, and a task that does not
find the driver's ``sweep.json`` there stops with one line saying so. Each task takes ``cpus_per_task`` CPUs (and
one GPU when the study's ``device`` is CUDA) and limits torch, OpenMP and numba to that many threads.

Ray is optional: ``import emphatic_rl`` and the local backend never import it; this module imports it only when a
study runs on it.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from emphatic_rl.config import ConfigError
from emphatic_rl.studies.sweep import DONE_NAME, SWEEP_NAME, Study, plan_study, run_study, validate_study

#: How often Ray reruns a task whose worker process died (each rerun resumes from the chunk's checkpoint).
MAX_RETRIES = 3


class ChunkFailed(RuntimeError):
    """Some population runs did not finish (their workers died more than ``max_retries`` times, or they raised)."""


def train_chunk(
    study: Study, folder: str, out_dir: str, cpus: int = 1, imports: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Train (or resume, or skip if finished) the chunk ``folder`` of ``study`` in ``out_dir`` in this process, with
    ``cpus`` threads. The body of one Ray task; returns where it ran, its seconds and its log lines."""
    import torch

    torch.set_num_threads(cpus)
    try:
        import numba

        numba.set_num_threads(min(cpus, int(getattr(numba.config, "NUMBA_NUM_THREADS", cpus))))
    except (ImportError, ValueError):
        pass
    from emphatic_rl.plugins import load_plugins

    load_plugins(imports)  # the agents and envs that the driver's plugins registered
    out = Path(out_dir)
    if not (out / SWEEP_NAME).is_file():
        raise ConfigError(
            f"{out_dir!r} is not visible on node {socket.gethostname()} (no {SWEEP_NAME} there): the ray backend "
            "needs --out on a filesystem that every node sees"
        )
    messages: list[str] = []
    start = time.perf_counter()
    run_study(study, out, progress=False, log=messages.append, only=[folder], record=False)
    return {
        "folder": folder,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "seconds": time.perf_counter() - start,
        "messages": messages,
    }


def run_study_ray(
    study: Study,
    out_dir: str | Path,
    address: str | None = None,
    cpus_per_task: int = 1,
    max_retries: int = MAX_RETRIES,
    log=print,
    imports: tuple[str, ...] | list[str] = (),
) -> list[Path]:
    """Validate every variant here, then train each unfinished chunk of ``study`` as a Ray task; returns the run
    folders (as ``run_study``).

    ``address``: the Ray cluster to join (``ray.init(address=...)``); ``None`` joins the Ray instance this process
    already started, or starts a local one on this machine's CPUs (shut down at the end). ``cpus_per_task``: CPUs
    (and threads) per task. ``max_retries``: reruns of a task whose worker died, each resuming from the checkpoint.
    ``imports``: plugin modules (``--import``) each task imports, after the installed entry-point plugins.
    Raises ``ConfigError`` for a user mistake (before any training where it can be known then) and ``ChunkFailed``
    naming the chunks that did not finish, after every other task has finished.
    """
    import logging

    import ray

    chunks = plan_study(study)
    validate_study(chunks)
    out = Path(out_dir).resolve()
    run_study(study, out, log=log, only=[])  # checks the folder's earlier record, writes sweep.json
    todo = []
    for chunk in chunks:
        if (out / chunk.folder / DONE_NAME).is_file():
            log(f"emphatic-rl sweep: {chunk.folder}: already finished, skipped")
        else:
            todo.append(chunk)
    started_here = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        started_here = True
    threads = str(cpus_per_task)
    env_vars = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "NUMBA_NUM_THREADS": threads}
    task = ray.remote(train_chunk)
    failures: list[str] = []
    try:
        pending = {}
        for chunk in todo:
            gpus = 1 if str(chunk.config.device).startswith("cuda") else 0
            ref = task.options(
                num_cpus=cpus_per_task,
                num_gpus=gpus,
                max_retries=max_retries,
                retry_exceptions=False,
                name=f"emphatic-rl-sweep:{chunk.folder}",
                runtime_env={"env_vars": env_vars},
            ).remote(study, chunk.folder, str(out), cpus_per_task, tuple(imports))
            pending[ref] = chunk
            log(
                f"emphatic-rl sweep: {chunk.folder}: submitted ({chunk.config.agent}, {len(chunk.settings)} settings "
                f"x {study.runs} runs = P {chunk.config.population_size}, {chunk.config.steps} steps)"
            )
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                chunk = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as error:
                    cause = getattr(error, "cause", None)
                    if isinstance(cause, ConfigError):
                        for other in pending:
                            ray.cancel(other, force=True)
                        raise ConfigError(f"{chunk.folder}: {cause}") from None
                    failures.append(f"{chunk.folder}: {type(cause or error).__name__}: {cause or error}")
                    log(f"emphatic-rl sweep: {chunk.folder}: failed: {failures[-1]}")
                    continue
                except ray.exceptions.RayError as error:  # the worker died more than max_retries times, node lost
                    failures.append(f"{chunk.folder}: {type(error).__name__} (after {max_retries} retries)")
                    log(f"emphatic-rl sweep: {chunk.folder}: failed: {failures[-1]}")
                    continue
                for message in result["messages"]:
                    log(message)
                log(
                    f"emphatic-rl sweep: {chunk.folder}: task finished on {result['host']} (pid {result['pid']}) "
                    f"in {result['seconds']:.0f} s"
                )
    finally:
        if started_here:
            ray.shutdown()
    if failures:
        raise ChunkFailed(
            f"{len(failures)} of {len(todo)} population runs did not finish ({'; '.join(failures)}); rerun the same "
            "command to resume them from their checkpoints"
        )
    return [out / chunk.folder for chunk in chunks]
