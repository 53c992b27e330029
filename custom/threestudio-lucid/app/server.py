"""The HTTP side of ``lucid-app`` (aiohttp): the page, its JSON API, and files under ``--outputs``.

Routes (every one behind the same checks: credentials when the app has them, a loopback ``Host``
when it has none, and same-origin JSON for anything that changes state):

- ``GET /`` and ``GET /static/<file>``: the page (``static/``);
- ``GET /files/<path>``: a file under ``--outputs`` (``access.resolve_under``; ``?download=1`` as an
  attachment); served in a CSP sandbox, so nothing under outputs runs as the app;
- ``GET /api/info``: devices, configs, defaults; ``GET /api/config?id=``: a config's text and options;
  ``POST /api/config/fields``: the options of an edited text;
- ``POST /api/runs``: a new run (queued); ``GET /api/runs``: the runs list;
  ``GET /api/run?key=``: one run (progress, console, images, results);
  ``POST /api/run/{stop,resume,export}``: its actions; ``POST /api/run/progress-video``: make the run's
  ``save/progress.mp4`` from its validation images (``progress_video.py``);
- ``GET /api/run/live.ply?key=``: the running job's splats: its live PLY (``save/live/``) or its newest
  checkpoint, whichever is newer (``live_splats.py``).

A run's key is the app's id (``r3``) or, for a folder the app did not start, ``d:<path under outputs>``.
"""
import asyncio
import json
import math
import os
import shlex
import time
import uuid
from argparse import Namespace
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional
from urllib.parse import quote

from aiohttp import web

from . import access, catalog, progress_video, run_reader
from .commands import FormError, form_overrides, live_view_overrides, parse_config_text
from .jobs import ACTIVE, JobManager, QueueError, Run
from .live_splats import LiveSplats

STATE = web.AppKey("state", object)
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; style-src 'self'; "
       "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


@dataclass
class Settings:
    outputs: str
    devices: List[str]
    credentials: Optional[access.Credentials] = None
    threestudio: Optional[str] = None
    toy_world: Optional[str] = None  # the default model on a CPU (built on first use)
    extra_configs: List[str] = field(default_factory=list)
    cwd: Optional[str] = None
    launcher: Optional[List[str]] = None  # replaces lucid-launch in front of the arguments (a wrapper)
    env: Optional[Dict[str, str]] = None  # the jobs' environment (default: the app's own)


class App:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.outputs = os.path.abspath(settings.outputs)
        os.makedirs(self.outputs, exist_ok=True)
        self.catalog = catalog.build_catalog(settings.threestudio, settings.extra_configs)
        self.on_gpu = "cpu" not in settings.devices
        self.default_config = catalog.default_config_id(self.catalog, self.on_gpu)
        self.manager = JobManager(self.outputs, settings.devices, settings.threestudio, settings.cwd,
                                  env=settings.env, launcher=settings.launcher)
        self.live = LiveSplats(root=self.outputs)
        self._folders: List[str] = []
        self._folders_at = 0.0

    # ---- helpers ----
    def file_url(self, path: Optional[str], download: bool = False) -> Optional[str]:
        if not path:
            return None
        rel = access.relative_inside(self.outputs, path)
        if not rel:
            return None
        url = "/files/" + quote(rel)
        try:  # a changed file gets a new URL, so the browser shows the new image or video
            url += f"?v={int(os.path.getmtime(path))}"
        except OSError:
            pass
        return url + ("&download=1" if download and "?" in url else "?download=1" if download else "")

    def mesh_view(self, files: Dict[str, str]) -> Optional[Dict[str, Any]]:
        """The mesh view of an export (``run_reader.mesh_view``) as URLs under ``--outputs``:
        ``{kind: ply|obj, url, name, mtl, texture, kd}``; None when there is nothing to draw or its
        file is not under ``--outputs``. The MTL and texture are named only when they are too."""
        view = run_reader.mesh_view(files)
        url = self.served_url(view["path"]) if view else None
        if not url:
            return None
        texture = self.served_url(view["texture"])
        return {"kind": view["kind"], "url": url, "name": os.path.basename(view["path"]),
                "mtl": self.served_url(view["mtl"]), "texture": texture,
                "texture_name": os.path.basename(view["texture"]) if texture else None, "kd": view["kd"]}

    def export_entry(self, export: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """An export folder for the page (``{step, files: {kind: download URL}, view}``), naming only
        the files ``/files/`` serves; None when that is none of them (a folder linked from elsewhere)."""
        files = {}
        for kind, path in export["files"].items():
            url = self.served_url(path, download=True)
            if url:
                files[kind] = url
        return {"step": export["step"], "files": files, "view": self.mesh_view(export["files"])} if files else None

    def served_url(self, path: Optional[str], download: bool = False) -> Optional[str]:
        """:meth:`file_url` of a file that ``/files/`` serves (``access.resolve_under``), else None."""
        rel = access.relative_inside(self.outputs, path) if path else None
        return self.file_url(path, download) if rel and access.resolve_under(self.outputs, rel) else None

    def progress_video_entry(self, video: Optional[Dict[str, Any]], newest_images: List[str]) -> Optional[Dict[str, Any]]:
        """The run's ``save/progress.mp4`` for the page: ``{url, download, stale}`` (``stale``: the run has
        written validation images since it was made); None when there is none that ``/files/`` serves."""
        url = self.served_url(video["path"]) if video else None
        if not url:
            return None
        newest = max((os.path.getmtime(p) for p in newest_images if os.path.exists(p)), default=0.0)
        return {"url": url, "download": self.served_url(video["path"], download=True), "stale": newest > video["time"]}

    def folders(self) -> List[str]:
        if time.time() - self._folders_at > 3.0:
            self._folders = run_reader.find_run_folders(self.outputs)
            self._folders_at = time.time()
        return self._folders

    def lookup(self, key: str):
        """``(run or None, trial_dir or None)`` of a run key; KeyError when unknown or not allowed."""
        if key.startswith("d:"):
            folder = access.resolve_folder_under(self.outputs, key[2:])
            if folder is None or not run_reader.is_run_folder(folder):
                raise KeyError(key)
            return self.manager.run_of_folder(folder), folder
        run = self.manager.runs.get(key)
        if run is None:
            raise KeyError(key)
        return run, run.trial_dir

    def model_default(self, entry: catalog.ConfigEntry) -> Optional[str]:
        if entry.world == "toy" and self.settings.toy_world:
            return self.settings.toy_world
        return None

    # ---- run views ----
    def run_state(self, run: Optional[Run], trial_dir: Optional[str]) -> Dict[str, Any]:
        jobs = self.manager.run_jobs(run) if run else []
        work = [j for j in jobs if j.kind != "export"]
        exports = [j for j in jobs if j.kind == "export"]
        job = work[-1] if work else None
        out: Dict[str, Any] = {"state": job.state if job else (run_reader.summary(trial_dir)["state"] if trial_dir else "unknown")}
        if job:
            out.update(message=job.message, error=job.error, place=self.manager.place(job), device=job.device,
                       job=job.id, started=job.started, ended=job.ended)
        if exports:
            e = exports[-1]
            out["export"] = {"state": e.state, "error": e.error, "message": e.message, "place": self.manager.place(e)}
        return out

    def list_runs(self) -> List[Dict[str, Any]]:
        items = []
        known = set()
        for run in sorted(self.manager.runs.values(), key=lambda r: r.created, reverse=True):
            state = self.run_state(run, run.trial_dir)
            if run.trial_dir:
                known.add(os.path.realpath(run.trial_dir))
            folder = run.trial_dir if run.trial_dir and os.path.isdir(run.trial_dir) else None
            items.append({"key": run.id, "prompt": run.prompt, "label": run.label, "user": run.user,
                          "created": run.created, "folder": access.relative_inside(self.outputs, folder) if folder else None,
                          **{k: state.get(k) for k in ("state", "place", "error")}})
        found = []
        for folder in self.folders():
            if os.path.realpath(folder) in known:
                continue
            rel = access.relative_inside(self.outputs, folder)
            if not rel:
                continue
            info = run_reader.summary(folder)
            found.append({"key": "d:" + rel, "prompt": info["prompt"], "label": info["name"], "user": None,
                          "created": info["modified"], "folder": rel, "state": info["state"], "place": None,
                          "error": None})
        found.sort(key=lambda r: r["created"], reverse=True)
        return items + found

    def run_detail(self, key: str) -> Dict[str, Any]:
        run, trial_dir = self.lookup(key)
        jobs = self.manager.run_jobs(run) if run else []
        for job in jobs[-1:]:
            self.manager.follow_moves(job)
        trial_dir = run.trial_dir if run else trial_dir
        state = self.run_state(run, trial_dir)
        cfg = run_reader.parsed_config(trial_dir) if trial_dir else {}
        out: Dict[str, Any] = {
            "key": key, "prompt": run.prompt if run else run_reader.summary(trial_dir)["prompt"],
            "label": run.label if run else cfg.get("name"), "user": run.user if run else None,
            "folder": trial_dir if trial_dir and os.path.isdir(trial_dir) else None, **state,
            "max_steps": (cfg.get("trainer") or {}).get("max_steps"),
            "jobs": [{"id": j.id, "kind": j.kind, "state": j.state, "error": j.error, "message": j.message,
                      "command": shlex.join(j.argv), "started": j.started, "ended": j.ended, "device": j.device}
                     for j in jobs],
        }
        latest = jobs[-1] if jobs else None
        if latest is not None:
            tail = run_reader.read_tail(latest.log)
            out["console"] = run_reader.console_lines(tail)
            running = latest.state in ("running", "stopping")
            out["progress"] = run_reader.progress_of(tail, out["max_steps"]) if running else None
            work = [j for j in jobs if j.kind != "export"] or jobs
            out["command"] = shlex.join(work[-1].argv)
            out["log"] = latest.log
        if latest is None and trial_dir:  # a run the app did not start: the command that did
            out["command"] = run_reader.command_of(trial_dir)
        if trial_dir and os.path.isdir(trial_dir):
            res = run_reader.results(trial_dir)
            for job in jobs:  # an export writes into its own folder beside the run
                if job.kind == "export" and job.trial_dir and job.trial_dir != trial_dir and os.path.isdir(job.trial_dir):
                    res["exports"] = run_reader.exports(job.trial_dir) + res["exports"]
            res["exports"].sort(key=lambda e: e["step"], reverse=True)
            out.update(
                images=[self.file_url(p) for p in res["images"]], image_step=res["image_step"],
                image_steps=[[step, [self.file_url(p) for p in paths]] for step, paths in res["image_steps"]],
                progress_video=self.progress_video_entry(res["progress_video"], res["images"]),
                video=self.file_url(res["video"]), video_step=res["video_step"],
                video_download=self.file_url(res["video"], download=True),
                video_name=os.path.basename(res["video"]) if res["video"] else None,
                splats=self.file_url(res["splats"]), splats_download=self.file_url(res["splats"], download=True),
                toy_world_eval=self.file_url(res["toy_world_eval"]), scores=res["scores"], loss=res["loss"],
                last_step=res["last_step"], checkpoints=res["checkpoints"][:5], n_checkpoints=len(res["checkpoints"]),
                exports=[e for e in map(self.export_entry, res["exports"]) if e],
            )
            running = latest is not None and latest.state in ("running", "stopping") and latest.kind != "export"
            version = self.live.version(trial_dir) if running else None
            out["live"] = {"version": version, "url": f"/api/run/live.ply?key={quote(key)}"} if version else None
        busy = any(j.state in ACTIVE for j in jobs)
        has_ckpt = bool(out.get("n_checkpoints"))
        finished = state["state"] == "done"
        out["actions"] = {
            "stop": busy,
            "resume": not busy and has_ckpt and not finished and os.path.isfile(os.path.join(trial_dir or "", "configs", "parsed.yaml")),
            "export": not busy and has_ckpt and os.path.isfile(os.path.join(trial_dir or "", "configs", "parsed.yaml")),
        }
        return out


# ------------------------------------------------------------------------------------------------
# middleware
# ------------------------------------------------------------------------------------------------
def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity (a toy-world score can be NaN): those become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(_finite(data), status=status, dumps=lambda d: json.dumps(d, allow_nan=False))


def _json_error(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status=status)


def make_guard(app_state: App):
    credentials = app_state.settings.credentials

    @web.middleware
    async def guard(request: web.Request, handler):
        if not access.host_allowed(request.headers.get("Host"), credentials is not None):
            return web.Response(status=421, text="this app answers requests to localhost only")
        if credentials is not None:
            user = credentials.check(request.headers.get("Authorization"))
            if user is None:
                return web.Response(status=401, text="credentials needed", headers={"WWW-Authenticate": 'Basic realm="lucid-app"'})
            request["user"] = user
        else:
            request["user"] = None
        if request.method not in ("GET", "HEAD"):
            if not access.same_origin(request.headers.get("Origin"), request.headers.get("Referer"), request.headers.get("Host")):
                return _json_error(403, "error: this request did not come from the app's page")
            if request.content_type != "application/json":
                return _json_error(415, "error: send JSON (Content-Type: application/json)")
        response = await handler(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Content-Security-Policy", CSP)
        return response

    return guard


# ------------------------------------------------------------------------------------------------
# routes
# ------------------------------------------------------------------------------------------------
def routes(state: App) -> web.RouteTableDef:
    r = web.RouteTableDef()

    def static_file(name: str) -> web.StreamResponse:
        path = access.resolve_under(STATIC_DIR, name)
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})

    @r.get("/")
    async def index(request):
        return static_file("index.html")

    @r.get("/static/{name:.*}")
    async def static(request):
        return static_file(request.match_info["name"])

    @r.get("/files/{path:.*}")
    async def files(request):
        path = access.resolve_under(state.outputs, request.match_info["path"])
        if path is None:
            raise web.HTTPNotFound(text="not a file under the app's outputs")
        headers = {"Content-Security-Policy": "sandbox", "Cache-Control": "no-cache"}
        if request.query.get("download"):
            headers["Content-Disposition"] = f"attachment; filename=\"{os.path.basename(path)}\""
        return web.FileResponse(path, headers=headers)

    @r.get("/api/info")
    async def info(request):
        toy = state.settings.toy_world
        return json_response({
            "devices": state.settings.devices, "outputs": state.outputs, "user": request["user"],
            "configs": [e.public() for e in state.catalog.entries], "default_config": state.default_config,
            "threestudio": state.settings.threestudio, "toy_world": toy,
            "captions": catalog.toy_world_captions(toy) if toy else [],
            "models": [m for m in [toy, "stabilityai/stable-diffusion-2-1-base"] if m],
        })

    @r.get("/api/config")
    async def config(request):
        entry = state.catalog.get(request.query.get("id", ""))
        if entry is None:
            return _json_error(404, "error: no such config")
        with open(entry.path, encoding="utf-8") as f:
            text = f.read()
        tree = parse_config_text(text)
        fields = catalog.fields_of(tree)
        model = state.model_default(entry)
        if model and "model" in fields:
            fields["model"]["value"] = model
        return json_response({"id": entry.id, "path": entry.path, "text": text, "fields": fields,
                              "prompt": catalog.config_prompt(tree), **entry.public()})

    @r.post("/api/config/fields")
    async def config_fields(request):
        body = await request.json()
        try:
            fields = catalog.fields_of(parse_config_text(str(body.get("text", ""))))
        except FormError as e:
            return _json_error(400, f"error: {e}")
        entry = state.catalog.get(str(body.get("config_id", "")))
        model = state.model_default(entry) if entry else None
        if model and "model" in fields:  # the app's default model, unless the text names another one
            with open(entry.path, encoding="utf-8") as f:
                in_file = catalog.fields_of(parse_config_text(f.read())).get("model", {}).get("value")
            if fields["model"]["value"] == in_file:
                fields["model"]["value"] = model
        return json_response({"fields": fields})

    @r.post("/api/runs")
    async def submit(request):
        body = await request.json()
        entry = state.catalog.get(str(body.get("config_id", "")))
        if entry is None:
            return _json_error(400, "error: choose a config (method) from the list")
        with open(entry.path, encoding="utf-8") as f:
            original = f.read()
        text = body.get("text")
        text = original if text is None else str(text)
        form = dict(body.get("fields") or {})
        form["prompt"] = body.get("prompt")
        try:
            overrides = form_overrides(text, form, state.outputs) + live_view_overrides(text)
        except FormError as e:
            return _json_error(400, f"error: {e}")
        config_path = entry.path
        if text.strip() != original.strip():
            config_path = os.path.join(state.manager.state_dir, "configs",
                                       f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}-{os.path.basename(entry.path)}")
            with open(config_path, "w", encoding="utf-8") as f:
                f.write(text)
        use_threestudio = bool(state.settings.threestudio) and (not entry.plugin or body.get("launcher") == "threestudio")
        error = precheck(config_path, overrides)
        if error:
            if config_path != entry.path:
                os.remove(config_path)
            return _json_error(400, error)
        model = form.get("model")
        build = None
        toy = state.settings.toy_world
        if toy and isinstance(model, str) and os.path.abspath(model.strip() or "-") == os.path.abspath(toy):
            build = toy if not os.path.isfile(os.path.join(toy, "model_index.json")) else None
        run = state.manager.submit_train(str(body.get("prompt")).strip(), entry.label, entry.id, config_path, overrides,
                                         plugin=not use_threestudio, user=request["user"], build_world=build)
        return json_response({"key": run.id})

    @r.get("/api/runs")
    async def runs(request):
        queued = len(state.manager.queue)
        running = [{"device": state.manager.devices[slot], "key": state.manager.jobs[j].run_id}
                   for slot, j in sorted(state.manager.busy.items())]
        return json_response({"runs": state.list_runs(), "queued": queued, "running": running,
                                  "devices": state.settings.devices})

    @r.get("/api/run")
    async def run(request):
        try:
            return json_response(state.run_detail(request.query.get("key", "")))
        except KeyError:
            return _json_error(404, "error: no such run")

    async def posted_run(request):
        """``(key, run, trial_dir)`` of the run a POST names, or None when there is no such run."""
        key = str((await request.json()).get("key", ""))
        try:
            return (key, *state.lookup(key))
        except KeyError:
            return None

    async def action(request, what: str):
        found = await posted_run(request)
        if found is None:
            return _json_error(404, "error: no such run")
        key, run, trial_dir = found
        try:
            if what == "stop":
                jobs = [j for j in (state.manager.run_jobs(run) if run else []) if j.state in ACTIVE]
                if not jobs:
                    raise QueueError("nothing is running or waiting for this run")
                return json_response({"key": key, "state": state.manager.stop(jobs[-1])})
            if run is None:
                run = state.manager.adopt_folder(trial_dir, request["user"])
            job = (state.manager.submit_resume if what == "resume" else state.manager.submit_export)(run, request["user"])
            return json_response({"key": run.id, "job": job.id})
        except QueueError as e:
            return _json_error(409, f"error: {e}")

    @r.post("/api/run/stop")
    async def stop(request):
        return await action(request, "stop")

    @r.post("/api/run/resume")
    async def resume(request):
        return await action(request, "resume")

    @r.post("/api/run/export")
    async def export(request):
        return await action(request, "export")

    video_locks: Dict[str, asyncio.Lock] = {}

    @r.post("/api/run/progress-video")
    async def make_progress_video(request):
        """Make (or remake) the run's ``save/progress.mp4`` from its validation images, one frame per
        step (``progress_video.py``); one at a time per run."""
        found = await posted_run(request)
        if found is None:
            return _json_error(404, "error: no such run")
        _key, run, trial_dir = found
        trial_dir = run.trial_dir if run else trial_dir
        if not trial_dir or not os.path.isdir(trial_dir):
            return _json_error(409, "error: the run has no folder yet")
        lock = video_locks.setdefault(os.path.realpath(trial_dir), asyncio.Lock())
        async with lock:
            steps = run_reader.validation_steps(trial_dir)
            try:
                made = await asyncio.get_running_loop().run_in_executor(
                    None, progress_video.make, state.outputs, trial_dir, steps)
            except progress_video.ProgressVideoError as e:
                return _json_error(409, f"error: {e}")
            except Exception as e:  # ffmpeg, a full disk (StorageError's one line), an unreadable image
                return _json_error(500, "error: the progress video was not made: " + " ".join(str(e).split())[:300])
        return json_response({"url": state.served_url(made["path"]), "download": state.served_url(made["path"], download=True),
                              "steps": made["steps"], "frames": made["frames"], "fps": made["fps"]})

    @r.get("/api/run/live.ply")
    async def live(request):
        try:
            _run, trial_dir = state.lookup(request.query.get("key", ""))
        except KeyError:
            return _json_error(404, "error: no such run")
        if not trial_dir:
            return _json_error(404, "error: no splats yet")
        answer = await asyncio.get_running_loop().run_in_executor(None, state.live.get, trial_dir)
        if answer is None:
            return _json_error(404, "error: no splats yet")
        version, step, body = answer
        source, written_ns = version.split(":", 1)[0], version.rsplit(":", 2)[1]
        return web.Response(body=body, content_type="application/octet-stream", headers={
            "X-Live-Version": version, "X-Source": source, "X-Step": "" if step is None else str(step),
            "X-Written": f"{int(written_ns) / 1e9:.3f}", "Cache-Control": "no-store"})

    return r


def precheck(config_path: str, overrides: List[str]) -> Optional[str]:
    """The launcher's own check of a new run's config (``host/preflight.py``: keys, types, steps,
    sizes, the run folder), run here so a bad option is one line at once instead of after the queue."""
    from ..host import preflight

    args = Namespace(config=config_path, train=True, validate=False, test=False, export=False, gpu="0",
                     verbose=False, typecheck=False)
    try:
        preflight.check(args, list(overrides))
    except preflight.UnknownResolverError:
        return None  # an extension in ./custom may register it: the launcher decides
    except preflight.ConfigError as e:
        return preflight.error_line(e)
    return None


def build_app(settings: Settings) -> web.Application:
    state = App(settings)
    application = web.Application(middlewares=[make_guard(state)], client_max_size=4 * 1024 * 1024)
    application[STATE] = state
    application.add_routes(routes(state))

    async def on_startup(_app):
        state.manager.start()

    async def on_shutdown(_app):
        await state.manager.shutdown()

    application.on_startup.append(on_startup)
    application.on_shutdown.append(on_shutdown)
    return application


__all__ = ["App", "Settings", "build_app"]
