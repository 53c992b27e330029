"""``lucid-app``: start the web page.

    lucid-app [--host 127.0.0.1] [--port 7860] [--outputs outputs] [--threestudio DIR]
              [--auth USER:PASS | --auth-file FILE] [--devices cpu|0,1,...] [--toy-world DIR] [--configs DIR ...]

It binds 127.0.0.1 unless told otherwise; any other address needs ``--auth`` or ``--auth-file`` and
says so in one line when they are missing. Runs go to ``--outputs`` (their folders, as
``lucid-launch`` names them) and the app keeps its records in ``<outputs>/.lucid-app/``. On a machine
without a GPU the default model is the toy world (``--toy-world``, default ``load/toy-world``, built
with every object the first time a run needs it); with GPUs it is the configs' Stable Diffusion.
Ctrl-C stops the running jobs the way Ctrl-C stops ``lucid-launch`` (a checkpoint after the step),
then the app.
"""
import argparse
import asyncio
import os
import signal
import socket
import sys
import threading
from typing import Optional, Tuple

from .access import AccessError, Credentials, exposure_error


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lucid-app", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (0: any free port; the URL is printed)")
    p.add_argument("--outputs", default="outputs", help="where runs go and the only folder whose files are served")
    p.add_argument("--threestudio", help="a threestudio checkout: offers its configs (baselines), run with its launch.py")
    p.add_argument("--auth", help="USER:PASS required from every browser (needed with a --host other than loopback)")
    p.add_argument("--auth-file", help="a file whose first line is USER:PASS (keeps the password off the command line)")
    p.add_argument("--devices", help="comma list of GPU ids, one run at a time on each, or 'cpu' (repeat it for "
                                     "several CPU runs at once: cpu,cpu); default: the GPUs nvidia-smi lists, else cpu")
    p.add_argument("--toy-world", help="the toy-world model folder used as the default model without a GPU "
                                       "(default load/toy-world; built on first use)")
    p.add_argument("--configs", action="append", default=[], help="another folder of configs to offer (repeatable)")
    return p


def settings_from(args):
    """The server's settings from the command line; :class:`AccessError` (one line) when they are unsafe or wrong."""
    from .catalog import detect_devices
    from .server import Settings

    if args.auth and args.auth_file:
        raise AccessError("give --auth or --auth-file, not both")
    credentials = Credentials.parse(args.auth, "--auth") if args.auth else (
        Credentials.from_file(args.auth_file) if args.auth_file else None)
    problem = exposure_error(args.host, credentials)
    if problem:
        raise AccessError(problem)
    if args.threestudio and not os.path.isfile(os.path.join(args.threestudio, "launch.py")):
        raise AccessError(f"--threestudio {args.threestudio!r} holds no launch.py: give the threestudio checkout")
    for folder in args.configs:
        if not os.path.isdir(folder):
            raise AccessError(f"--configs {folder!r} is not a folder")
    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else detect_devices()
    if not devices or any(d != "cpu" and not d.isdigit() for d in devices):
        raise AccessError(f"--devices {args.devices!r}: give GPU ids (0,1) or cpu")
    toy = args.toy_world or ("load/toy-world" if all(d == "cpu" for d in devices) else None)
    outputs = os.path.abspath(args.outputs)
    try:
        os.makedirs(outputs, exist_ok=True)
    except OSError as e:
        raise AccessError(f"--outputs {args.outputs!r} cannot be created ({e.strerror})")
    if not os.access(outputs, os.W_OK):
        raise AccessError(f"--outputs {args.outputs!r} is not writable")
    return Settings(outputs=outputs, devices=devices, credentials=credentials,
                    threestudio=os.path.abspath(args.threestudio) if args.threestudio else None,
                    toy_world=os.path.abspath(toy) if toy else None,
                    extra_configs=[os.path.abspath(c) for c in args.configs], cwd=os.getcwd())


async def serve(settings, host: str, port: int, ready=None, stop: Optional[asyncio.Event] = None) -> None:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM in the main thread); then stop the jobs."""
    from aiohttp import web

    from .server import build_app

    runner = web.AppRunner(build_app(settings), handle_signals=False, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    site = web.SockSite(runner, sock)
    await site.start()
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}/"
    stop = stop or asyncio.Event()
    if threading.current_thread() is threading.main_thread():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready(url)
    await stop.wait()
    print("lucid-app: stopping; running jobs save a checkpoint first", flush=True)
    await runner.cleanup()


def serve_in_thread(settings, host: str = "127.0.0.1", port: int = 0) -> Tuple[str, callable]:
    """Start the app in a background thread (tests, benchmarks): ``(url, stop)``."""
    started = threading.Event()
    box = {}

    def target():
        async def main():
            box["stop"] = asyncio.Event()
            box["loop"] = asyncio.get_running_loop()
            await serve(settings, host, port, ready=lambda url: (box.update(url=url), started.set()), stop=box["stop"])

        try:
            asyncio.run(main())
        except BaseException as e:  # surfaced to the caller below
            box["error"] = e
            started.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    started.wait(60)
    if "error" in box:
        raise box["error"]

    def stop():
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(180)

    return box["url"], stop


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except AccessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def ready(url):
        print(f"lucid-app: {url} (outputs {settings.outputs}; devices {','.join(settings.devices)}"
              f"{'; password required' if settings.credentials else ''})", flush=True)

    from .jobs import QueueError

    try:
        asyncio.run(serve(settings, args.host, args.port, ready=ready))
    except QueueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port} ({e.strerror or e}): choose another --port", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
