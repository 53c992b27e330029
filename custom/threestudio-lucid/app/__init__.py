"""``lucid-app``: the web page a researcher keeps open while generating.

A thin client of the same launcher: a run from the page is ``lucid-launch`` (or threestudio's
``launch.py``) started as its own process with an argument list, exactly as on the command line, so
it can be reproduced from its ``configs/parsed.yaml``. One module per concern:

- ``cli.py``         the ``lucid-app`` command: options, who may connect, starting the server;
- ``access.py``      passwords (HTTP basic auth), same-origin checks, and the one function that
                     decides which file paths may be served (only under ``--outputs``);
- ``catalog.py``     the configs the page offers (methods), the options it shows, the default model;
- ``commands.py``    a form and a config text -> the launcher's argument list (dotlist overrides);
- ``jobs.py``        the queue (one run at a time per device) and the launcher processes: start,
                     Stop (SIGINT, as Ctrl-C), Resume, Export; the app's run records on disk;
- ``run_reader.py``  what a run folder holds: progress from its console, the loss curve, images,
                     the video, splats, meshes, toy-world scores;
- ``live_splats.py`` the running job's newest checkpoint as a splat PLY for the live 3D view;
- ``server.py``      the HTTP routes (aiohttp) and the static page in ``static/``.
"""
