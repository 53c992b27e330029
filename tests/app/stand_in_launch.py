"""A stand-in for ``lucid-launch`` in the queue tests: it takes the launcher's arguments, notes when it
starts and ends in ``$STAND_IN_RECORD`` (one JSON line each), runs ``$STAND_IN_SECONDS``, and stops on
SIGINT the way the system does (one line, exit 130)."""
import json
import os
import signal
import sys
import time

prompt = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("system.prompt_processor.prompt=")), "")
stop = []


def note(event):
    with open(os.environ["STAND_IN_RECORD"], "a") as f:
        f.write(json.dumps({"event": event, "prompt": prompt, "time": time.time(), "pid": os.getpid()}) + "\n")


signal.signal(signal.SIGINT, lambda signum, frame: stop.append(signum))
note("start")
end = time.time() + float(os.environ.get("STAND_IN_SECONDS", "1"))
while time.time() < end and not stop:
    time.sleep(0.01)
note("stopped" if stop else "end")
if stop:
    print("SIGINT: stopped after this step", flush=True)
    sys.exit(130)
