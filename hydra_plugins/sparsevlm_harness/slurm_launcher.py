"""`hydra/launcher: sparsevlm_slurm`: hydra-submitit-launcher's Slurm launcher, made to wait for every job.

Why it exists: hydra-submitit-launcher 1.2.0 ends `SlurmLauncher.launch` with `[j.results()[0] for j in jobs]`, so
- the first job that ended without a result (cancelled, killed for memory, node failure, timed out for good) raises,
  and the results of all the other jobs of the sweep are dropped with it;
- without Slurm accounting (`sacct` answers "accounting storage is disabled") submitit never learns that such a job
  has ended: its state stays UNKNOWN and `results()` waits forever.

What it changes, and only this: `launch` submits exactly like the plugin (same executor parameters, one array job, the
plugin's own `__call__` runs in each job), then waits for *every* job and returns one JobReturn per job, in order,
without raising. A job is finished when its result file exists, or when it has left the queue (`squeue`, so no
accounting is needed) and no result appeared within `lost_grace_s`; such a lost job gets a FAILED JobReturn holding a
`LostJobError`. Jobs pending for a reason that needs a changed request (e.g. a time limit above the partition's) are
reported in the log. Everything else (config keys, requeue on timeout, logs under `.submitit/`) is the plugin's.

Importing this module stays light (Hydra imports every plugin module at startup): no torch, submitit is imported lazily.
"""

import logging
import os
import subprocess
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

# squeue states after which a job will not run again (it may still be listed for MinJobAge seconds)
FINISHED_STATES = frozenset(
    {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}
)
# pending reasons that Slurm will not resolve by itself: the request exceeds what the partition allows
UNSATISFIABLE_REASONS = frozenset(
    {"PartitionConfig", "PartitionTimeLimit", "PartitionNodeLimit", "InvalidAccount", "InvalidQOS"}
)
UNSATISFIABLE_WARNING = (
    "Slurm job %s pends with reason %s: it asks for more than the partition allows (hydra.launcher: partition, "
    "timeout_min, cpus_per_task, mem_gb, gpus_per_node) and will not start unless the site changes its limits; "
    "scancel %s, fix the setting and rerun"
)


class LostJobError(RuntimeError):
    """A Slurm job that left the queue without writing its result (cancelled, killed, node failure, ...)."""


@dataclass
class SparseVLMSlurmConf(SlurmQueueConf):
    """The plugin's Slurm settings plus how lost jobs are detected."""

    _target_: str = "hydra_plugins.sparsevlm_harness.slurm_launcher.SparseVLMSlurmLauncher"
    # a job that left the queue counts as lost once its result file is still missing after this long (shared
    # file systems can show a result file late)
    lost_grace_s: float = 60.0
    # seconds between two looks at the result files and at squeue
    poll_s: float = 10.0


class SparseVLMSlurmLauncher(SlurmLauncher):
    """SlurmLauncher whose `launch` waits for all jobs, never raises for one job, and detects lost jobs via squeue."""

    def __init__(self, lost_grace_s: float = 60.0, poll_s: float = 10.0, **params: Any) -> None:
        """Keep the two waiting settings here; everything else goes to the plugin (and from there to sbatch)."""
        super().__init__(**params)
        self.lost_grace_s = float(lost_grace_s)
        self.poll_s = float(poll_s)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Submit one array job for the batch, wait for every job, return one JobReturn per job (failed if lost)."""
        try:
            jobs = self._submit(job_overrides, initial_job_idx)
        except Exception as err:  # sbatch refused the request: every job of the batch fails the same way
            log.error("Slurm submission failed, no job was started: %s", err)
            return [self._failed_return(overrides, err) for overrides in job_overrides]
        lost = self._wait(jobs)
        returns = []
        for overrides, job in zip(job_overrides, jobs, strict=True):
            if job.job_id in lost:
                returns.append(self._failed_return(overrides, lost[job.job_id]))
                continue
            try:
                returns.append(job.results()[0])
            except Exception as err:  # the job ran but failed outside the task (e.g. while loading its config)
                returns.append(self._failed_return(overrides, err))
        failed = [job.job_id for job, ret in zip(jobs, returns, strict=True) if ret.status != JobStatus.COMPLETED]
        log.info("Slurm: %d of %d jobs completed; failed or lost: %s", len(jobs) - len(failed), len(jobs), failed)
        return returns

    def _submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
        """Submit the batch as the plugin does (same parameters, same callable); returns submitit's jobs."""
        import submitit

        assert self.config is not None
        params = dict(self.params)
        executor = submitit.AutoExecutor(
            folder=params.pop("submitit_folder"), cluster="slurm", slurm_max_num_timeout=params.pop("max_num_timeout")
        )
        generic = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{key if key in generic else f"slurm_{key}": value for key, value in params.items()}
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info("Submitit 'slurm' sweep output dir : %s", sweep_dir)
        calls = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            calls.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*calls, strict=True))
        log.info("Slurm: submitted %d jobs: %s", len(jobs), ", ".join(job.job_id for job in jobs))
        return jobs

    def _wait(self, jobs: Sequence[Any]) -> dict[str, LostJobError]:
        """Poll until every job has a result file or has been out of the queue for lost_grace_s; returns the lost."""
        waiting = {job.job_id: job for job in jobs}
        gone_since: dict[str, float] = {}
        lost: dict[str, LostJobError] = {}
        warned: set[tuple[str, str]] = set()
        squeue_failing = False
        progress: tuple[int, int, int] = (-1, 0, 0)
        while waiting:
            try:
                queue = squeue_states({job_id.split("_")[0] for job_id in waiting})
            except RuntimeError as err:  # controller busy or restarting: judge no job until squeue answers again
                if not squeue_failing:
                    log.warning("%s; waiting for squeue to answer again", err)
                squeue_failing = True
                queue = None
            else:
                squeue_failing = False
            now = time.monotonic()
            for job_id, job in list(waiting.items()):
                if job.paths.result_pickle.exists():
                    del waiting[job_id]
                    continue
                if queue is None:
                    continue
                state, reason = queue.get(job_id, ("", ""))
                if state and state not in FINISHED_STATES:
                    gone_since.pop(job_id, None)  # listed again, e.g. requeued after a timeout
                    if state == "PENDING" and reason in UNSATISFIABLE_REASONS and (job_id, reason) not in warned:
                        warned.add((job_id, reason))
                        log.warning(UNSATISFIABLE_WARNING, job_id, reason, job_id)
                    continue
                if now - gone_since.setdefault(job_id, now) >= self.lost_grace_s:
                    lost[job_id] = LostJobError(
                        f"Slurm job {job_id} ended without a result ({state or 'no longer in squeue'}); "
                        f"its log: {job.paths.stderr}"
                    )
                    log.error("%s", lost[job_id])
                    del waiting[job_id]
            if queue is not None:  # one line when something changed, not one per poll
                states = [queue.get(job_id, ("",))[0] for job_id in waiting]
                now_progress = (len(waiting), states.count("RUNNING"), states.count("PENDING"))
                if now_progress != progress:
                    progress = now_progress
                    log.info(
                        "Slurm: %d of %d jobs ended, %d running, %d pending",
                        len(jobs) - progress[0],
                        len(jobs),
                        progress[1],
                        progress[2],
                    )
            if waiting:
                time.sleep(self.poll_s)
        return lost

    def _failed_return(self, overrides: Sequence[str], error: BaseException) -> JobReturn:
        """A FAILED JobReturn for a job that produced none itself (Hydra re-raises `error` on `.return_value`)."""
        assert self.config is not None
        return JobReturn(
            overrides=list(overrides),
            task_name=self.config.hydra.job.name,
            status=JobStatus.FAILED,
            _return_value=error,
        )


def squeue_states(array_ids: Collection[str]) -> dict[str, tuple[str, str]]:
    """Job id -> (state, pending reason) of these array jobs' tasks as squeue lists them; RuntimeError if it fails."""
    # --states=all: a finished task stays listed with its final state (CANCELLED, ...) for the controller's MinJobAge
    command = ["squeue", "--noheader", "--array", "--states=all", "--me", "--format=%i|%T|%r"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RuntimeError(f"squeue failed: {err}") from err
    if out.returncode != 0:
        raise RuntimeError(f"squeue failed (exit {out.returncode}): {out.stderr.strip()}")
    states = {}
    for line in out.stdout.splitlines():
        job_id, state, reason = (line.split("|") + ["", ""])[:3]
        if job_id.split("_")[0] in array_ids:
            states[job_id] = (state, reason)
    return states


ConfigStore.instance().store(
    group="hydra/launcher", name="sparsevlm_slurm", node=SparseVLMSlurmConf, provider="sparsevlm_harness"
)
