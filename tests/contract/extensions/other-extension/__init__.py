"""A second threestudio extension for the contract suite: it sits in ``custom/`` beside the plugin,
as threestudio-3dgs would, and registers a name of its own (threestudio-3dgs registers
``gaussian-splatting``; ours keep the ``lucid-`` prefix, so the two never clash)."""
import sys

for name in ("threestudio", "threestudio_lucid.compat"):
    if name in sys.modules and hasattr(sys.modules[name], "register"):
        register = sys.modules[name].register
        break
else:  # launch.py imports threestudio before it loads extensions; lucid-launch imports the plugin
    raise ImportError("other-extension: neither threestudio nor the bundled host is imported")


@register("gaussian-splatting")
class OtherExtensionGeometry:
    pass


print("other-extension loaded", flush=True)
