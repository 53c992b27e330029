"""Prompt processors (threestudio's ``models/prompt_processors``): importing registers them."""
from . import base, stable_diffusion_prompt_processor  # noqa: F401
