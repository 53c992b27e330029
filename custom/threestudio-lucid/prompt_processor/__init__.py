"""Prompt processors of the plugin (importing registers them)."""
from . import stable_diffusion_prompt_processor  # noqa: F401
