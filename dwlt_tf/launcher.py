"""Runs a study's cells as jobs of an existing engine: submitit, onto SLURM or local processes.

Every job runs exactly one cell (`CellJob`), through the same code path as
`trainers/study.py --cell=<address> --wait`: under the cell's lease, resuming the cell
from its checkpoints if an earlier attempt was stopped. The `launcher` config section
(configs/study.py) sets the engine and the resources of a cell's job.

* SLURM (`cluster: slurm`, or `auto` where `sbatch` exists): every unfinished cell is
  submitted at once, each with `afterok` dependencies on the jobs of the cells it needs
  (cells of one kind with the same needs go as one job array), plus one assembling job
  after all of them; `launch` prints the job ids and returns (`launcher.wait=True`: it
  waits and prints progress). A preempted or timed-out job is checkpointed and requeued
  by submitit (SIGUSR2 `launcher.signal_delay_s` before the limit): the run stops at its
  next step with a checkpoint (`preemption.py`), submitit requeues the job, and the cell
  resumes.
* Local (`cluster: local`, or `auto` without SLURM): `launch` keeps up to
  `launcher.max_parallel` jobs running, submits each cell as soon as the cells it needs
  are finished, resubmits a job that died (up to `launcher.retries` times; the cell
  resumes from its checkpoints) and assembles the report when everything is done.

Each job's stdout/stderr are in `launcher.folder` (default `<workdir>/jobs`).
"""
import collections
import os
import time

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)

from dwlt_tf import cells, errors, preemption, stages

ASSEMBLE = "assemble"


def require_submitit():
    try:
        import submitit  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise errors.ConfigError("--launcher=submitit needs submitit: pip install "
                                 "'dwlt-tf[cluster]' (submitit==1.5.4)") from None
    return submitit


class CellJob:
    """A submitit job computing one cell of a study (or, with address None, assembling).

    Checkpointable: on preemption or timeout submitit calls `checkpoint` and requeues the
    same job; the cell resumes from its own checkpoints.
    """

    def __init__(self, config_dict, workdir, address):
        self.config_dict, self.workdir, self.address = config_dict, workdir, address

    def __call__(self):
        import ml_collections  # pylint: disable=import-outside-toplevel
        from dwlt_tf import cli, study  # pylint: disable=import-outside-toplevel
        config = ml_collections.ConfigDict(self.config_dict)
        # A stop request (SIGUSR2 from submitit's SLURM setup, SIGTERM) checkpoints the
        # cell; then submitit's own handler requeues the job (`chain`).
        with preemption.graceful(chain=True):
            strategy = cli.setup(config)
            select = study.only(self.address) if self.address else None
            runner = study.Study(config, self.workdir, strategy, select=select, wait=True)
            runner.run()
        return {"ran": runner.ran, "finished": runner.finished}

    def checkpoint(self, *args, **kwargs):  # submitit's requeue protocol
        submitit = require_submitit()
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def executor(spec, workdir):
    """A submitit executor for the spec's `launcher` section."""
    submitit = require_submitit()
    settings = spec.launcher
    folder = settings.folder or os.path.join(workdir, "jobs")
    cluster = None if settings.cluster == "auto" else settings.cluster
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster)
    ex.update_parameters(timeout_min=settings.timeout_min, nodes=settings.nodes,
                         tasks_per_node=settings.tasks_per_node,
                         cpus_per_task=settings.cpus_per_cell, mem_gb=settings.mem_gb,
                         gpus_per_node=settings.gpus_per_cell)
    if ex.cluster == "slurm":
        params = {"slurm_additional_parameters": dict(settings.slurm)}
        if settings.partition:
            params["slurm_partition"] = settings.partition
        ex.update_parameters(**params)
    return ex


def launch(config, spec, workdir, command=None, data_dir=None, log=print):
    """Launches the study's unfinished cells (module docstring). Returns {address: job}."""
    del command, data_dir  # the config already carries --data_dir (cli.apply_data_dir)
    ex = executor(spec, workdir)
    graph = cells.build(spec)
    config_dict = config.to_dict()
    if ex.cluster == "slurm":
        return _launch_slurm(ex, graph, spec, config_dict, workdir, log)
    return _launch_local(ex, graph, spec, config_dict, workdir, log)


class _Planned:
    """The replicas a cell's job will train with (from the `launcher` section): cells are
    keyed by them, so finished ones are found before any job starts."""

    def __init__(self, spec):
        settings = spec.launcher
        per_node = settings.gpus_per_cell if settings.gpus_per_cell else settings.tasks_per_node
        self.num_replicas_in_sync = settings.nodes * per_node


def _context(spec, graph, workdir):
    return stages.Context(spec, graph, workdir, strategy=_Planned(spec), log=lambda *_: None)


def _finished(ctx, address):
    ctx.resolved.pop(address, None)
    try:
        return stages.resolve(ctx, address).finished
    except stages.NotReady:
        return False


def _groups(graph, todo):
    """Consecutive cells of one kind with the same needs: one job array each."""
    groups = []
    for cell in graph:
        if cell.address not in todo:
            continue
        if groups and groups[-1][0].kind == cell.kind and groups[-1][0].needs == cell.needs:
            groups[-1].append(cell)
        else:
            groups.append([cell])
    return groups


def _launch_slurm(ex, graph, spec, config_dict, workdir, log):
    ctx = _context(spec, graph, workdir)
    todo = {c.address for c in graph if not _finished(ctx, c.address)}
    extra = dict(spec.launcher.slurm)
    jobs = {}
    for group in _groups(graph, todo):
        after = sorted({jobs[n].job_id for c in group for n in c.needs if n in jobs})
        _set_dependency(ex, extra, after)
        ex.update_parameters(name=f"dwlt-{group[0].kind}")
        with ex.batch():
            submitted = [ex.submit(CellJob(config_dict, workdir, c.address)) for c in group]
        for cell, job in zip(group, submitted):
            jobs[cell.address] = job
    _set_dependency(ex, extra, sorted(job.job_id for job in jobs.values()))
    ex.update_parameters(name="dwlt-assemble", gpus_per_node=0)
    jobs[ASSEMBLE] = ex.submit(CellJob(config_dict, workdir, None))
    log(f"study: submitted {len(jobs) - 1} cell jobs and the assembling job "
        f"{jobs[ASSEMBLE].job_id} to SLURM ({len(graph) - len(todo)} cells already "
        f"finished); logs in {ex.folder}")
    for address, job in jobs.items():
        log(f"  {job.job_id}  {address}")
    if spec.launcher.wait:
        _watch(jobs, log)
    return jobs


def _set_dependency(ex, extra, after):
    params = dict(extra)
    if after:
        params["dependency"] = "afterok:" + ":".join(after)
    ex.update_parameters(slurm_additional_parameters=params)


def _watch(jobs, log):
    """Polls the jobs' states (sacct through submitit) until the assembling job ends."""
    last = None
    while True:
        states = collections.Counter(job.state for job in jobs.values())
        line = "study jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        if line != last:
            log(line)
            last = line
        if jobs[ASSEMBLE].done():
            jobs[ASSEMBLE].result()  # raises the assembling job's error, if any
            return
        time.sleep(30)


def _launch_local(ex, graph, spec, config_dict, workdir, log):
    """The local engine: submit cells as their inputs finish, `max_parallel` at a time."""
    ctx = _context(spec, graph, workdir)
    done = {c.address for c in graph if _finished(ctx, c.address)}
    running, attempts, jobs = {}, collections.Counter(), {}
    last = None
    while len(done) < len(graph):
        preemption.check("while launching the study's jobs")
        for address, job in list(running.items()):
            if not job.done():
                continue
            del running[address]
            if _finished(ctx, address):
                done.add(address)
                continue
            attempts[address] += 1
            if attempts[address] > spec.launcher.retries:
                raise errors.UserError(
                    f"cell {address} failed {attempts[address]} times; its last job's log: "
                    f"{job.paths.stderr} (fix the cause, then launch again: finished cells "
                    "are kept)")
            log(f"study: job {job.job_id} of {address} ended without finishing it; "
                f"resubmitting (attempt {attempts[address] + 1})")
        for cell in graph:
            if len(running) >= spec.launcher.max_parallel:
                break
            if cell.address in done or cell.address in running:
                continue
            if all(n in done or n not in graph for n in cell.needs):
                ex.update_parameters(name=f"dwlt-{cell.kind}")
                job = ex.submit(CellJob(config_dict, workdir, cell.address))
                running[cell.address] = jobs[cell.address] = job
        line = (f"study: {len(done)}/{len(graph)} cells done, {len(running)} jobs running: "
                + ", ".join(f"{j.job_id} {a}" for a, j in list(running.items())[:3])
                + (" ..." if len(running) > 3 else ""))
        if line != last:
            log(line)
            last = line
        time.sleep(1.0)
    job = ex.submit(CellJob(config_dict, workdir, None))
    log(f"study: all {len(graph)} cells done; assembling (job {job.job_id})")
    job.result()  # the assembling job's error, if any, with its traceback
    jobs[ASSEMBLE] = job
    return jobs
