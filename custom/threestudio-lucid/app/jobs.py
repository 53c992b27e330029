"""The queue and the launcher processes.

A *run* is one generation (a prompt, a config, a run folder); it is made of *jobs*, each one launcher
process: ``train`` (a new run), ``resume`` (``--train resume=<ckpt>`` with the run's
``configs/parsed.yaml``, into the same folder) and ``export`` (``--export``, a mesh; the launcher
writes it into a fresh folder beside the run). Every job waits in one first-come queue and runs on
a device as soon as one is free: one job at a time per device (``--devices``), whatever the number
of clicks. A job is its own process group, started with an argument list (never a shell); its
console goes to ``<outputs>/.lucid-app/jobs/<job>.log``.

Stop is Ctrl-C: SIGINT to the job's process group. The system then finishes the step, writes
``ckpts/interrupted-step=<k>.ckpt`` and the splats, and exits 130; a second Stop stops at once, a
third kills. When the app itself dies, the kernel sends its jobs SIGINT (``PR_SET_PDEATHSIG``), so a
run is never left training unwatched and is always resumable.

The records (``<outputs>/.lucid-app/runs.json``) are rewritten atomically after every change; an app
started again lists the earlier runs, and a job it finds still marked running has ended with it.
"""
import asyncio
import itertools
import json
import os
import re
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Dict, List, Optional

from . import run_reader
from .commands import launch_argv, override

STATE_DIR = ".lucid-app"
RECORDS = "runs.json"
ACTIVE = ("queued", "running", "stopping")
MOVED = re.compile(r"this run writes into '([^']+)'")


@dataclass
class Job:
    id: str
    run_id: str
    kind: str  # train | resume | export
    config: str  # the --config file
    overrides: List[str]
    launcher: str  # lucid | threestudio
    cwd: str
    log: str
    state: str = "queued"  # queued, running, stopping, done, failed, stopped, cancelled
    argv: List[str] = field(default_factory=list)
    device: Optional[str] = None
    trial_dir: Optional[str] = None  # where this job writes (an export: its own folder)
    submitted: float = 0.0
    started: Optional[float] = None
    ended: Optional[float] = None
    returncode: Optional[int] = None
    error: Optional[str] = None
    message: Optional[str] = None
    pid: Optional[int] = None
    stop_requests: int = 0
    build_world: Optional[str] = None  # a toy world this job builds first (the app's default model)
    user: Optional[str] = None


@dataclass
class Run:
    id: str
    prompt: str
    label: str  # the config's label in the page
    config_id: str
    launcher: str
    created: float
    user: Optional[str] = None
    trial_dir: Optional[str] = None
    jobs: List[str] = field(default_factory=list)


class QueueError(ValueError):
    """An action the run's state does not allow; the message is one line."""


def write_json_atomic(path: str, data: Any) -> None:
    """A reader or a kill never sees half a file (``atomic_files.py``)."""
    from ..atomic_files import write_text

    write_text(path, json.dumps(data, indent=1))


def _die_with_parent() -> None:
    """In the job's process (Linux): SIGINT when the app dies, so the run saves and stops."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _next_second(stamp: str) -> str:
    moment = datetime.strptime(stamp, "@%Y%m%d-%H%M%S") + timedelta(seconds=1)
    return moment.strftime("@%Y%m%d-%H%M%S")


class JobManager:
    """The app's runs and jobs, the queue, and the processes."""

    def __init__(self, outputs: str, devices: List[str], threestudio: Optional[str] = None, cwd: Optional[str] = None,
                 env: Optional[Dict[str, str]] = None, launcher: Optional[List[str]] = None):
        """``launcher``: an argument list that replaces ``lucid-launch`` (or threestudio's ``python
        launch.py``) in front of the launch arguments, e.g. a wrapper; None: the launcher itself."""
        self.outputs = os.path.abspath(outputs)
        self.devices = list(devices)
        self.threestudio = os.path.abspath(threestudio) if threestudio else None
        self.cwd = os.path.abspath(cwd or os.getcwd())
        self.env = dict(os.environ if env is None else env)
        self.launcher = list(launcher) if launcher else None
        self.state_dir = os.path.join(self.outputs, STATE_DIR)
        self.runs: Dict[str, Run] = {}
        self.jobs: Dict[str, Job] = {}
        self.queue: List[str] = []
        self.busy: Dict[int, str] = {}  # slot (index into devices) -> job id
        self.processes: Dict[str, asyncio.subprocess.Process] = {}
        self.claimed_dirs: set = set()
        self._ids = {"r": itertools.count(1), "j": itertools.count(1)}
        self._wake: Optional[asyncio.Event] = None
        self._dispatcher: Optional[asyncio.Task] = None
        self._tasks: set = set()
        self._world_lock: Optional[asyncio.Lock] = None
        os.makedirs(os.path.join(self.state_dir, "jobs"), exist_ok=True)
        os.makedirs(os.path.join(self.state_dir, "configs"), exist_ok=True)
        self._lock = self._hold_outputs()
        self._load()

    def _hold_outputs(self) -> Optional[int]:
        """One app per outputs folder (two would keep two queues on one device and overwrite each
        other's records): an exclusive lock on ``.lucid-app/app.lock`` for the app's life."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return None
        fd = os.open(os.path.join(self.state_dir, "app.lock"), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip()
            os.close(fd)
            raise QueueError(f"another lucid-app ({holder or 'running'}) serves --outputs {self.outputs}: use that "
                             "one, stop it, or give another --outputs") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        return fd

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # ---- records ----
    def _load(self) -> None:
        path = os.path.join(self.state_dir, RECORDS)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return
        for r in data.get("runs", []):
            self.runs[r["id"]] = Run(**r)
        for j in data.get("jobs", []):
            job = Job(**j)
            if job.state in ACTIVE:
                # the app that ran it has ended, and with it (PR_SET_PDEATHSIG) the job
                if job.state == "queued":
                    job.state, job.message = "cancelled", "the app was restarted before this job started"
                else:
                    self._classify_end(job, None, note="the app ended while it ran")
            self.jobs[job.id] = job
        for prefix, records in (("r", self.runs), ("j", self.jobs)):
            numbers = [int(k[1:]) for k in records if k[1:].isdigit()]
            self._ids[prefix] = itertools.count(max(numbers, default=0) + 1)
        self.save()

    def save(self) -> None:
        write_json_atomic(os.path.join(self.state_dir, RECORDS), {
            "runs": [asdict(r) for r in self.runs.values()],
            "jobs": [asdict(j) for j in self.jobs.values()],
        })

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids[prefix])}"

    # ---- queries ----
    def run_jobs(self, run: Run) -> List[Job]:
        return [self.jobs[j] for j in run.jobs if j in self.jobs]

    def place(self, job: Job) -> Optional[int]:
        """1 for the next job to start, 2 for the one after, ...; None when not waiting."""
        return self.queue.index(job.id) + 1 if job.id in self.queue else None

    def run_of_folder(self, trial_dir: str) -> Optional[Run]:
        real = os.path.realpath(trial_dir)
        for run in self.runs.values():
            if run.trial_dir and os.path.realpath(run.trial_dir) == real:
                return run
        return None

    # ---- submitting ----
    def submit_train(self, prompt: str, label: str, config_id: str, config: str, overrides: List[str], plugin: bool,
                     user: Optional[str] = None, build_world: Optional[str] = None) -> Run:
        launcher = "threestudio" if (self.threestudio and not plugin) else "lucid"
        run = Run(self._new_id("r"), prompt, label, config_id, launcher, time.time(), user)
        self.runs[run.id] = run
        self._enqueue(run, "train", config, overrides, build_world=build_world, user=user)
        return run

    def adopt_folder(self, trial_dir: str, user: Optional[str] = None) -> Run:
        """A run folder the app did not start (or started before a restart), as a run of the app."""
        existing = self.run_of_folder(trial_dir)
        if existing is not None:
            return existing
        info = run_reader.summary(trial_dir)
        launcher = "threestudio" if self.threestudio and not str(info.get("guidance_type", "")).startswith("lucid-") else "lucid"
        run = Run(self._new_id("r"), info["prompt"], info["name"], "", launcher, time.time(), user, trial_dir)
        self.runs[run.id] = run
        self.save()
        return run

    def _busy_run(self, run: Run) -> Optional[Job]:
        return next((j for j in self.run_jobs(run) if j.state in ACTIVE), None)

    def _check_idle_with_folder(self, run: Run, action: str) -> None:
        if self._busy_run(run):
            raise QueueError("this run already has a job queued or running")
        if not run.trial_dir:
            raise QueueError(f"this run has no folder yet: nothing to {action}")

    def submit_resume(self, run: Run, user: Optional[str] = None) -> Job:
        self._check_idle_with_folder(run, "resume")
        ckpt = run_reader.resume_checkpoint(run.trial_dir)
        parsed = os.path.join(run.trial_dir, "configs", "parsed.yaml")
        if ckpt is None or not os.path.isfile(parsed):
            raise QueueError("this run wrote no checkpoint and configs/parsed.yaml: start it again instead")
        return self._enqueue(run, "resume", parsed, [override("resume", ckpt)], user=user)

    def submit_export(self, run: Run, user: Optional[str] = None) -> Job:
        self._check_idle_with_folder(run, "export")
        ckpts = run_reader.checkpoints(run.trial_dir)
        last = os.path.join(run.trial_dir, "ckpts", "last.ckpt")
        ckpt = last if os.path.isfile(last) else (ckpts[0] if ckpts else None)
        parsed = os.path.join(run.trial_dir, "configs", "parsed.yaml")
        if ckpt is None or not os.path.isfile(parsed):
            raise QueueError("this run wrote no checkpoint yet: nothing to export")
        return self._enqueue(run, "export", parsed, [override("resume", ckpt)], user=user)

    def _enqueue(self, run: Run, kind: str, config: str, overrides: List[str], build_world: Optional[str] = None,
                 user: Optional[str] = None) -> Job:
        job_id = self._new_id("j")
        cwd = self.threestudio if run.launcher == "threestudio" else self.cwd
        job = Job(job_id, run.id, kind, config, list(overrides), run.launcher, cwd,
                  os.path.join(self.state_dir, "jobs", f"{job_id}.log"), submitted=time.time(), build_world=build_world,
                  user=user)
        job.argv = launch_argv(self.threestudio if run.launcher == "threestudio" else None, config,
                               "export" if kind == "export" else "train", "<device>", overrides)
        self.jobs[job.id] = job
        run.jobs.append(job.id)
        self.queue.append(job.id)
        self.save()
        if self._wake is not None:
            self._wake.set()
        return job

    # ---- stopping ----
    def stop(self, job: Job) -> str:
        """Cancel a waiting job; SIGINT a running one (twice: at once; three times: SIGKILL)."""
        if job.state == "queued":
            self.queue.remove(job.id)
            job.state, job.ended, job.message = "cancelled", time.time(), "cancelled before it started"
            self.save()
            return "cancelled"
        if job.state not in ("running", "stopping") or job.pid is None:
            raise QueueError(f"the job is {job.state}: nothing to stop")
        job.stop_requests += 1
        sig = signal.SIGINT if job.stop_requests <= 2 else signal.SIGKILL
        try:
            os.killpg(job.pid, sig)
        except ProcessLookupError:
            pass
        job.state = "stopping"
        job.message = ("stopping after this step: a checkpoint and the splats are saved (Stop again to stop at once)"
                       if job.stop_requests == 1 else "stopping at once" if sig == signal.SIGINT else "killed")
        self.save()
        return job.state

    # ---- running ----
    def start(self) -> None:
        """Start the dispatcher on the running event loop."""
        self._wake = asyncio.Event()
        self._world_lock = asyncio.Lock()
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())

    async def _dispatch(self) -> None:
        while True:
            free = [slot for slot in range(len(self.devices)) if slot not in self.busy]
            while free and self.queue:
                job = self.jobs[self.queue.pop(0)]
                slot = free.pop(0)
                self.busy[slot] = job.id
                task = asyncio.get_running_loop().create_task(self._run_job(job, slot))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            self._wake.clear()
            await self._wake.wait()

    def _child_env(self, device: str) -> Dict[str, str]:
        env = dict(self.env)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env["PYTHONUNBUFFERED"] = "1"
        if device != "cpu" and "CUDA_VISIBLE_DEVICES" in self.env:
            env["CUDA_VISIBLE_DEVICES"] = device  # the app's own list names the card; --gpu 0 is it
        return env

    def _gpu_arg(self, device: str) -> str:
        return "0" if device == "cpu" or "CUDA_VISIBLE_DEVICES" in self.env else device

    def _plan(self, job: Job, run: Run) -> List[str]:
        """The job's final argument list, with the run folder fixed in advance: the launcher's own
        check (``host/preflight.py``) says where it will write, and a new run gets that folder's
        timestamp (the next free second, never one another job of this app has claimed)."""
        from argparse import Namespace

        from ..host import preflight

        mode = "export" if job.kind == "export" else "train"
        overrides = list(job.overrides)
        args = Namespace(config=job.config, train=mode == "train", validate=False, test=False, export=mode == "export",
                         gpu="0", verbose=False, typecheck=False)
        plan = None
        try:
            plan = preflight.check(args, overrides)
        except preflight.UnknownResolverError:
            plan = None  # an extension of ./custom registers it: the launcher decides the folder
        if plan is not None:
            trial_dir, stamp = plan.trial_dir, plan.timestamp
            if job.kind != "resume" and stamp:
                prefix = trial_dir[: len(trial_dir) - len(stamp)] if trial_dir.endswith(stamp) else None
                while prefix is not None and (os.path.lexists(prefix + stamp) or prefix + stamp in self.claimed_dirs):
                    stamp = _next_second(stamp)
                if prefix is not None:
                    trial_dir = prefix + stamp
                    overrides.append(override("timestamp", stamp))
            job.trial_dir = os.path.abspath(trial_dir)
            self.claimed_dirs.add(job.trial_dir)
        threestudio = self.threestudio if job.launcher == "threestudio" else None
        argv = launch_argv(threestudio, job.config, mode, "0", overrides)
        if self.launcher:
            argv = self.launcher + argv[argv.index("--config"):]
        return argv

    async def _run_job(self, job: Job, slot: int) -> None:
        run = self.runs[job.run_id]
        device = self.devices[slot]
        job.device, job.state, job.started = device, "running", time.time()
        self.save()
        try:
            if job.build_world and not os.path.isfile(os.path.join(job.build_world, "model_index.json")):
                if not await self._build_world(job):
                    return
            try:
                argv = self._plan(job, run)
            except Exception as e:  # the launcher's own one-line error, before any process
                from ..host.preflight import error_line

                self._finish(job, 2, error_line(e))
                return
            argv[argv.index("--gpu") + 1] = self._gpu_arg(device)
            job.argv = argv
            if job.kind != "export" and job.trial_dir and not run.trial_dir:
                run.trial_dir = job.trial_dir
            with open(job.log, "a", encoding="utf-8") as log:
                log.write(f"$ {' '.join(argv)}\n")
                log.flush()
                if job.stop_requests:  # stopped while the world was being built
                    self._finish(job, 130, None)
                    return
                process = await asyncio.create_subprocess_exec(
                    *argv, cwd=job.cwd, env=self._child_env(device), stdin=asyncio.subprocess.DEVNULL,
                    stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
            job.pid = process.pid
            self.processes[job.id] = process
            self.save()
            returncode = await process.wait()
            self.processes.pop(job.id, None)
            if job.kind == "train" and not (run.trial_dir and os.path.isdir(run.trial_dir)):
                run.trial_dir = self._discover(job) or run.trial_dir
            self._finish(job, returncode, None)
        except Exception as e:  # the app's own fault: say it on the job, keep the queue going
            self._finish(job, -1, f"error: the app could not run this job: {type(e).__name__}: {e}")
        finally:
            self.busy.pop(slot, None)
            if job.trial_dir:
                self.claimed_dirs.discard(job.trial_dir)
            self.save()
            if self._wake is not None:
                self._wake.set()

    async def _build_world(self, job: Job) -> bool:
        """The default toy world, built once before the first job that needs it."""
        async with self._world_lock:
            if os.path.isfile(os.path.join(job.build_world, "model_index.json")):
                return True
            builder = os.path.join(os.path.dirname(sys.executable), "lucid-build-toy-world")
            argv = [builder if os.path.isfile(builder) else "lucid-build-toy-world", job.build_world, "--bandwidth", "0.2"]
            job.message = "building the toy world (once, about 10 s)"
            self.save()
            with open(job.log, "a", encoding="utf-8") as log:
                log.write(f"$ {' '.join(argv)}\n")
                log.flush()
                process = await asyncio.create_subprocess_exec(
                    *argv, cwd=self.cwd, env=self._child_env("cpu"), stdin=asyncio.subprocess.DEVNULL, stdout=log,
                    stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
            job.pid = process.pid
            returncode = await process.wait()
            job.pid, job.message = None, None
            if returncode != 0:
                self._finish(job, returncode, None)
                return False
            return True

    def follow_moves(self, job: Job) -> None:
        """The launcher moves a new run to the next free second when its planned folder was claimed
        by another launch in the meantime, and says so in one line: follow it."""
        if job.state not in ("running", "stopping") or not job.trial_dir or job.kind == "resume":
            return
        if os.path.isfile(os.path.join(job.trial_dir, "cmd.txt")) or os.path.isdir(os.path.join(job.trial_dir, "save")):
            return
        match = MOVED.search(run_reader.read_tail(job.log, 200000))
        moved = os.path.abspath(match.group(1)) if match and os.path.isdir(match.group(1)) else None
        if moved is None and job.launcher == "threestudio" and time.time() - (job.started or 0) > 10:
            moved = self._discover(job)  # threestudio's launch.py names the folder without sanitising
        if moved and moved != job.trial_dir:
            run = self.runs.get(job.run_id)
            if run is not None and run.trial_dir == job.trial_dir:
                run.trial_dir = moved
            job.trial_dir = moved
            self.save()

    def _discover(self, job: Job) -> Optional[str]:
        """Where a launch wrote when its folder could not be planned: the newest run folder made
        under ``--outputs`` since the job started."""
        found = [f for f in run_reader.find_run_folders(self.outputs) if os.path.getmtime(f) >= (job.started or 0) - 1]
        return max(found, key=os.path.getmtime) if found else None

    def _classify_end(self, job: Job, returncode: Optional[int], note: Optional[str] = None) -> None:
        tail = run_reader.read_tail(job.log)
        run = self.runs.get(job.run_id)
        folder = job.trial_dir or (run.trial_dir if run else None)
        ckpt = run_reader.resume_checkpoint(folder) if folder else None
        interrupted = ckpt is not None and run_reader.INTERRUPTED.match(os.path.basename(ckpt))
        stopped_codes = (128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGINT, -signal.SIGTERM, -signal.SIGKILL)
        if returncode == 0:
            job.state, job.error = "done", None
        elif returncode is None and "error:" in "\n".join(run_reader.console_lines(tail, limit=5)):
            job.state, job.error = "failed", run_reader.error_line(tail)
        elif job.stop_requests or returncode in stopped_codes or returncode is None:
            job.state, job.error = "stopped", None
            if interrupted:
                job.message = f"stopped at step {run_reader.ckpt_step(ckpt)}: Resume continues from {os.path.basename(ckpt)}"
            elif ckpt:
                job.message = f"stopped; Resume continues from {os.path.basename(ckpt)}"
            else:
                job.message = "stopped before the first checkpoint"
        else:
            job.state, job.error = "failed", run_reader.error_line(tail)
        if note:
            job.message = f"{note}; {job.message}" if job.message else note

    def _finish(self, job: Job, returncode: int, error: Optional[str]) -> None:
        job.returncode, job.ended, job.pid = returncode, time.time(), None
        if error is not None:
            job.state, job.error = "failed", error
        else:
            job.message = None
            self._classify_end(job, returncode)
        self.save()

    async def shutdown(self, wait: float = 120.0) -> None:
        """Stop every running job the Ctrl-C way and wait (at most ``wait`` s) for their checkpoints."""
        for job_id in list(self.queue):
            self.stop(self.jobs[job_id])
        running = [self.jobs[j] for j in self.processes]
        for job in running:
            if job.state == "running":
                self.stop(job)
        if self.processes:
            await asyncio.wait([asyncio.ensure_future(p.wait()) for p in self.processes.values()], timeout=wait)
        if self._dispatcher is not None:
            self._dispatcher.cancel()
        self.release()
        for task in list(self._tasks):
            try:
                await asyncio.wait_for(task, timeout=5)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
