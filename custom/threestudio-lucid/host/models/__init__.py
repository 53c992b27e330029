from . import background, exporters, geometry, materials, prompt_processors, renderers  # noqa: F401
