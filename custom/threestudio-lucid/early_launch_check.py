"""``lucid-launch``'s config check before the heavy imports (torch, Lightning, diffusers): a pure
config error is one ``error:`` line in a fraction of a second instead of after the whole stack loads.
Only the launcher is affected; importing the plugin anywhere else (threestudio's ``custom/`` loader,
tests, user code) does nothing here."""


def run():
    """Check ``lucid-launch``'s experiment config before the package imports torch and Lightning.

    The console script (``threestudio_lucid.host.launch:main``) and ``python -m
    threestudio_lucid.host.launch`` both import the package first, and the package's ``__init__``
    imports every component (threestudio's ``custom/`` loader relies on that), which takes seconds.
    The package's ``__init__`` calls this first: ``host/preflight.py`` is loaded outside the package
    (under a private name, from synthetic parent packages that never run ``threestudio_lucid/__init__.py``)
    and exits with the one-line error when the config is bad. Any other program importing the plugin is unaffected;
    ``launch.main`` repeats the full check either way.
    """
    import os
    import sys

    light = "_lucid_launch_light"
    if __name__ != "threestudio_lucid.early_launch_check" or light in sys.modules:
        return
    argv0 = os.path.basename(sys.argv[0]) if sys.argv else ""
    orig = list(getattr(sys, "orig_argv", []))
    as_module = any(a == "-m" and b == "threestudio_lucid.host.launch" for a, b in zip(orig, orig[1:]))
    if not (argv0 in ("lucid-launch", "lucid-launch-script.py", "lucid-launch.exe") or as_module):
        return

    import importlib
    import types

    root = os.path.dirname(os.path.abspath(__file__))
    for name, path in ((light, root), (light + ".host", os.path.join(root, "host")),
                       (light + ".host.utils", os.path.join(root, "host", "utils"))):
        package = types.ModuleType(name)
        package.__path__ = [path]
        sys.modules[name] = package
    preflight = importlib.import_module(light + ".host.preflight")
    preflight.exit_on_config_error(sys.argv[1:])

