"""threestudio-lucid: text-to-3D with Gaussian splats and ISM / ESD / VSD / SDS score distillation.

Importable as ``threestudio_lucid`` (installed by setup.py) and by threestudio's custom/ loader as
``threestudio-lucid``; all imports inside are relative for that reason. Importing the package
registers its components (names start with ``lucid-``) into threestudio or the bundled host, as
``compat`` decides.
"""
__version__ = "0.1.0"

from . import quiet  # noqa: E402

quiet.install()  # before diffusers is imported: see quiet.py for what is dropped and why

from . import early_launch_check  # noqa: E402  (lucid-launch only: a bad config fails before the imports below)

early_launch_check.run()

from . import compat  # noqa: F401,E402
from . import data, exporter, geometry, guidance, prompt_processor, renderer, system, toy_world  # noqa: F401,E402  (register the components)
