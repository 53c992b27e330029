"""``lucid-sweep``: prompts x configs x seeds, each run a task on Ray, resumable, with a manifest.

    lucid-sweep --out sweeps/toy --prompts "a penguin" "a red cube" \\
        --config custom/threestudio-lucid/configs/lucid-ism-toy.yaml \\
        --config "custom/threestudio-lucid/configs/lucid-sds-toy.yaml system.guidance.guidance_scale=50" \\
        --seeds 0 1 --override trainer.max_steps=200

- Prompts: ``--prompts`` on the command line and/or ``--prompts-file`` (one per line; blank lines and
  lines starting with ``#`` skipped).
- Configs: ``--config "PATH [override ...]"`` (one string: the path, then that config's own dotlist
  overrides); ``--override`` applies to every run. A config whose ``system_type`` is not one of this
  plugin's (``lucid-...``) is a threestudio baseline: it runs through ``launch.py`` of the checkout
  given with ``--threestudio DIR`` (paths relative to that checkout), and is an error without one.
  Plugin configs run through ``lucid-launch`` (or, with ``--threestudio``, also through ``launch.py``
  when ``--use-threestudio-launch`` is given).
- Ray: a local Ray by default (``--num-cpus``, default all cores), ``--address`` joins a cluster
  (``ray start --head`` on one machine, ``ray start --address=HEAD:6379`` on the others, then
  ``lucid-sweep --address HEAD:6379 ...``). A task takes one GPU where the cluster has GPUs, else
  ``--cpus-per-task`` CPU slots (its torch threads are set to that many).
- Runs: ``<out>/runs/<config name>/<prompt>-seed<seed>/`` (``exp_root_dir``, ``name``, ``tag`` and
  ``use_timestamp=false`` set for each run; the launcher owns that folder); each run's console output
  is ``<out>/logs/<config name>/<prompt>-seed<seed>.log`` and its outcome the ``.json`` beside it. The
  manifest ``<out>/sweep.json`` lists the sweep's settings and every run with its state, time and error
  line; it is rewritten after each run.
- Resuming: running the same command again skips the runs whose status is ``done``, retries the
  failed ones, and continues an interrupted one from its ``ckpts/last.ckpt`` when it wrote one (else
  its folder is kept aside as ``<folder>.interrupted-<n>`` and the run starts again).
"""
import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from .atomic_files import write_text
from .errors import StorageError

MANIFEST = "sweep.json"
OUT_HINT = "free space there or give --out a folder on a disk with room"


class SweepError(ValueError):
    """A bad sweep input; the message names the option and how to fix it."""


@dataclass
class ConfigEntry:
    name: str
    path: str  # as given (relative to the checkout for threestudio baselines)
    overrides: List[str]
    launcher: str  # "lucid" (lucid-launch) or "threestudio" (launch.py of the checkout)


@dataclass
class Run:
    run_id: str
    prompt: str
    config: str
    seed: int
    trial_dir: str
    log: str  # the launch's console output
    status: str  # its outcome (json)
    state: str = "pending"  # pending, done, failed, interrupted
    seconds: Optional[float] = None
    error: Optional[str] = None
    command: List[str] = field(default_factory=list)


def prompt_slug(prompt: str, limit: int = 60) -> str:
    """A folder name for a prompt: letters, digits and single underscores, at most ``limit`` long."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", prompt).strip("_")[:limit].strip("_")
    return slug or "prompt"


def read_prompts(prompts: Sequence[str], prompts_file: Optional[str]) -> List[str]:
    out = [p.strip() for p in prompts if p.strip()]
    if prompts_file:
        if not os.path.isfile(prompts_file):
            raise SweepError(f"--prompts-file {prompts_file!r} does not exist: give a text file with one prompt per line")
        with open(prompts_file, encoding="utf-8") as f:
            from_file = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        if not from_file:
            raise SweepError(f"--prompts-file {prompts_file!r} holds no prompts (it is empty, or only blank lines and "
                             "# comments): write one prompt per line, e.g. 'a DSLR photo of a corgi'")
        out += from_file
    if not out:
        raise SweepError("no prompts: give --prompts \"a penguin\" ... or --prompts-file FILE")
    slugs = [prompt_slug(p) for p in out]
    clash = sorted({s for s in slugs if slugs.count(s) > 1})
    if clash:
        raise SweepError(f"prompts {[p for p in out if prompt_slug(p) in clash]} share the folder name {clash[0]!r}: "
                         "make them differ in letters or digits")
    return out


def system_type_of(path: str) -> str:
    from omegaconf import OmegaConf

    try:
        return str(OmegaConf.load(path).get("system_type", ""))
    except Exception as e:  # a YAML error: say which file
        raise SweepError(f"--config {path!r} is not a readable YAML config: {e}") from None


def parse_configs(specs: Sequence[str], threestudio: Optional[str], use_threestudio_launch: bool) -> List[ConfigEntry]:
    if not specs:
        raise SweepError("no configs: give --config PATH (repeat it; add overrides inside the quotes)")
    entries: List[ConfigEntry] = []
    for spec in specs:
        parts = shlex.split(spec)
        path, overrides = parts[0], parts[1:]
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise SweepError(f"--config {spec!r}: {bad[0]!r} is not an override KEY=VALUE")
        local = os.path.isfile(path)
        in_checkout = threestudio is not None and os.path.isfile(os.path.join(threestudio, path))
        if not local and not in_checkout:
            where = f" or in --threestudio {threestudio}" if threestudio else ""
            raise SweepError(f"--config {path!r} does not exist here{where}")
        system_type = system_type_of(path if local else os.path.join(threestudio, path))
        plugin = system_type.startswith("lucid-")
        if not plugin and threestudio is None:
            raise SweepError(f"--config {path!r} is a threestudio baseline (system_type {system_type!r}): give the "
                             "threestudio checkout to run it with --threestudio DIR")
        launcher = "threestudio" if (not plugin or use_threestudio_launch) and threestudio else "lucid"
        if launcher == "threestudio" and local and not in_checkout:
            path = os.path.abspath(path)  # launch.py runs in the checkout
        name = os.path.splitext(os.path.basename(path))[0]
        taken = {e.name for e in entries}
        base, k = name, 2
        while name in taken:
            name, k = f"{base}-{k}", k + 1
        entries.append(ConfigEntry(name, path, overrides, launcher))
    return entries


def plan_runs(out: str, prompts: List[str], configs: List[ConfigEntry], seeds: List[int]) -> List[Run]:
    runs = []
    for config in configs:
        for prompt in prompts:
            for seed in seeds:
                tag = f"{prompt_slug(prompt)}-seed{seed}"
                logs = os.path.join(os.path.abspath(out), "logs", config.name, tag)
                runs.append(Run(f"{config.name}/{tag}", prompt, config.name, seed,
                                os.path.join(os.path.abspath(out), "runs", config.name, tag), logs + ".log",
                                logs + ".json"))
    return runs


def command_for(run: Run, config: ConfigEntry, overrides: List[str], threestudio: Optional[str],
                resume: Optional[str]) -> List[str]:
    exp_root, name = os.path.dirname(os.path.dirname(run.trial_dir)), os.path.basename(os.path.dirname(run.trial_dir))
    args = ["--config", config.path, "--train", "--gpu", "0",
            f"system.prompt_processor.prompt={run.prompt}", f"seed={run.seed}", f"exp_root_dir={exp_root}",
            f"name={name}", f"tag={os.path.basename(run.trial_dir)}", "use_timestamp=false",
            *config.overrides, *overrides]
    if resume:
        args.append(f"resume={resume}")
    if config.launcher == "threestudio":
        return [sys.executable, os.path.join(os.path.abspath(threestudio), "launch.py"), *args]
    launcher = shutil.which("lucid-launch") or os.path.join(os.path.dirname(sys.executable), "lucid-launch")
    return [launcher, *args]


def read_status(run: Run) -> Dict[str, Any]:
    try:
        with open(run.status, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def write_json(path: str, data: Any) -> None:
    """Atomically (``atomic_files.py``): a reader (or a kill) never sees half a file."""
    write_text(path, json.dumps(data, indent=2), hint=OUT_HINT)


def prepare(run: Run) -> Optional[str]:
    """Where an earlier attempt left the run: the checkpoint to resume from, or None to start afresh
    (an interrupted folder without a checkpoint is kept aside, never deleted)."""
    if not os.path.isdir(run.trial_dir):
        return None
    last = os.path.join(run.trial_dir, "ckpts", "last.ckpt")
    if os.path.isfile(last) and read_status(run).get("state") != "failed":
        return last
    k = 1
    while os.path.exists(f"{run.trial_dir}.interrupted-{k}"):
        k += 1
    os.replace(run.trial_dir, f"{run.trial_dir}.interrupted-{k}")
    return None


def error_line(log_tail: str) -> str:
    """The line that says what went wrong: the last ``error``/``Error`` line, else the last line."""
    lines = [line.strip() for line in log_tail.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"(^error:|Error\b|error\b)", line):
            return line[:500]
    return lines[-1][:500] if lines else "no output"


def _die_with_parent() -> None:
    """In the launch's process (Linux): end when its Ray worker ends, so a killed sweep leaves no run
    behind that a resumed sweep would start a second time."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def execute(command: List[str], cwd: str, log_path: str, threads: int) -> Dict[str, Any]:
    """Run one launch (inside a Ray task), appending its console output to ``log_path``."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    start = time.time()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        returncode = subprocess.run(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None).returncode
    with open(log_path, encoding="utf-8", errors="replace") as log:
        tail = log.read()[-20000:]
    return {"returncode": returncode, "seconds": time.time() - start,
            "error": None if returncode == 0 else error_line(tail)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lucid-sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the sweep folder (runs, logs, sweep.json)")
    p.add_argument("--prompts", nargs="*", default=[], help="prompts")
    p.add_argument("--prompts-file", help="a text file with one prompt per line")
    p.add_argument("--config", action="append", default=[], dest="configs",
                   help='"PATH [KEY=VALUE ...]": a config and its own overrides (repeat for each config)')
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--override", action="append", default=[], help="KEY=VALUE for every run (repeatable)")
    p.add_argument("--threestudio", help="a threestudio checkout: runs baseline configs with its launch.py")
    p.add_argument("--use-threestudio-launch", action="store_true",
                   help="with --threestudio, run the plugin's configs through launch.py too")
    p.add_argument("--address", help="a running Ray cluster to join (default: a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPU slots of the local Ray (default: all cores)")
    p.add_argument("--cpus-per-task", type=int, default=1, help="CPU slots (and torch threads) per CPU run")
    p.add_argument("--retry-failed", action=argparse.BooleanOptionalAction, default=True,
                   help="rerun the runs that failed before (default: yes)")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their commands, run nothing")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return sweep(args)
    except (SweepError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def sweep(args) -> int:
    if args.threestudio and not os.path.isfile(os.path.join(args.threestudio, "launch.py")):
        raise SweepError(f"--threestudio {args.threestudio!r} holds no launch.py: give the threestudio checkout")
    bad = [o for o in args.override if "=" not in o]
    if bad:
        raise SweepError(f"--override {bad[0]!r} is not KEY=VALUE")
    if args.cpus_per_task < 1:
        raise SweepError(f"--cpus-per-task {args.cpus_per_task} must be >= 1")
    prompts = read_prompts(args.prompts, args.prompts_file)
    configs = parse_configs(args.configs, args.threestudio, args.use_threestudio_launch)
    by_name = {c.name: c for c in configs}
    runs = plan_runs(args.out, prompts, configs, list(dict.fromkeys(args.seeds)))
    os.makedirs(args.out, exist_ok=True)
    manifest_path = os.path.join(args.out, MANIFEST)

    def save_manifest():
        write_json(manifest_path, {
            "command": ["lucid-sweep", *args.argv],
            "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
            "prompts": prompts, "seeds": list(dict.fromkeys(args.seeds)), "overrides": args.override,
            "configs": [asdict(c) for c in configs], "threestudio": args.threestudio,
            "runs": [asdict(r) for r in runs],
        })

    todo = []
    for run in runs:
        status = read_status(run)
        if status.get("state") == "done" or (status.get("state") == "failed" and not args.retry_failed):
            run.state, run.seconds, run.error = status["state"], status.get("seconds"), status.get("error")
            run.command = status.get("command", [])
        else:
            todo.append(run)
    skipped = len(runs) - len(todo)
    print(f"lucid-sweep: {len(runs)} runs ({len(configs)} configs x {len(prompts)} prompts x "
          f"{len(set(args.seeds))} seeds), {skipped} already finished, {len(todo)} to run; manifest {manifest_path}")
    if args.dry_run:
        for run in todo:
            print(f"  {run.run_id}: {shlex.join(command_for(run, by_name[run.config], args.override, args.threestudio, None))}")
        return 0
    save_manifest()
    if todo:
        run_on_ray(args, todo, by_name, save_manifest)
    failed = [r for r in runs if r.state == "failed"]
    print(f"lucid-sweep: {sum(r.state == 'done' for r in runs)}/{len(runs)} done, {len(failed)} failed")
    for run in failed:
        print(f"  failed {run.run_id}: {run.error}  (log: {run.log})")
    return 1 if failed else 0


def run_on_ray(args, todo: List[Run], by_name: Dict[str, ConfigEntry], save_manifest) -> None:
    try:
        import ray
    except ImportError:
        raise SweepError("lucid-sweep needs Ray: pip install 'ray>=2.9' (installed by scripts/setup.sh)") from None
    started_here = not ray.is_initialized()
    if started_here:
        if args.address:
            ray.init(address=args.address, log_to_driver=False)
        else:
            ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        gpus = ray.cluster_resources().get("GPU", 0) > 0
        options = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": args.cpus_per_task}
        remote = ray.remote(**options)(execute)
        pending = {}
        for run in todo:
            resume = prepare(run)
            config = by_name[run.config]
            run.command = command_for(run, config, args.override, args.threestudio, resume)
            cwd = os.path.abspath(args.threestudio) if config.launcher == "threestudio" else os.getcwd()
            pending[remote.remote(run.command, cwd, run.log, args.cpus_per_task)] = run
        total, finished = len(pending), 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            run = pending.pop(ready[0])
            result = ray.get(ready[0])
            finished += 1
            run.state = "done" if result["returncode"] == 0 else "failed"
            run.seconds, run.error = round(result["seconds"], 1), result["error"]
            write_json(run.status, {
                "state": run.state, "seconds": run.seconds, "error": run.error, "returncode": result["returncode"],
                "command": run.command, "prompt": run.prompt, "config": run.config, "seed": run.seed})
            save_manifest()
            what = f"done in {run.seconds:.0f} s" if run.state == "done" else f"FAILED: {run.error}"
            print(f"[{finished}/{total}] {run.run_id}: {what}", flush=True)
    finally:
        if started_here:
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
