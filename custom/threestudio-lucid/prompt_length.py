"""Prompt length against the text encoder's limit, checked before encoding.

threestudio's prompt processor pads to ``model_max_length`` (77 for CLIP: 75 text tokens plus the
start and end tokens) but does not truncate, so a longer prompt crashes its CLIP text encoder with
"Sequence length must be less than max_position_embeddings". diffusers' pipelines truncate instead,
which silently drops the end of the prompt. Neither tells the user which setting to change, so the
plugin counts the tokens first and fails with one line naming the config key.

A leaf module (it imports only ``errors``), so the bundled host and the guidance can both use it.
"""
from typing import Dict

from .errors import ConfigError

# tokenizers without a length limit report a huge model_max_length (transformers' VERY_LARGE_INTEGER)
_NO_LIMIT = 10**6


def count_tokens(tokenizer, text: str) -> int:
    """Tokens the text encoder sees for ``text``: start and end tokens included, nothing truncated."""
    return len(tokenizer(text, truncation=False, verbose=False).input_ids)


def _shown(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def check_prompt_lengths(tokenizer, named_prompts: Dict[str, str]) -> None:
    """Raise :class:`ConfigError` for the first prompt longer than ``tokenizer.model_max_length``.

    ``named_prompts`` maps the config key a prompt comes from (e.g.
    ``system.prompt_processor.negative_prompt``) to its text; the key is what the message names.
    """
    limit = tokenizer.model_max_length
    if limit is None or limit >= _NO_LIMIT:
        return
    for key, text in named_prompts.items():
        n_tokens = count_tokens(tokenizer, text)
        if n_tokens > limit:
            raise ConfigError(
                f"{key} {_shown(text)} is {n_tokens} tokens long with the start and end tokens, over the "
                f"text encoder's limit of {limit} (model_max_length: {limit - 2} text tokens plus start and end), "
                f"and prompts are not truncated: shorten it to at most {limit - 2} tokens."
            )


# threestudio's view-dependent prompt templates (prompt_processors/base.py), per direction
VIEW_TEMPLATES = {
    False: {"side": "{}, side view", "front": "{}, front view", "back": "{}, back view", "overhead": "{}, overhead view"},
    True: {"side": "side view of {}", "front": "front view of {}", "back": "backside view of {}", "overhead": "overhead view of {}"},
}


def prompt_processor_prompts(cfg, prefix: str = "system.prompt_processor") -> Dict[str, str]:
    """Every text a threestudio ``stable-diffusion-prompt-processor`` with config ``cfg`` encodes,
    keyed by the config key a user would change (a templated view prompt counts as ``prompt``).
    A ``lib:`` prompt is looked up by threestudio in its prompt library and is left out."""
    prompt = str(cfg.get("prompt", ""))
    named = {f"{prefix}.negative_prompt": str(cfg.get("negative_prompt", "") or "")}
    if not prompt.startswith("lib:"):
        named[f"{prefix}.prompt"] = prompt
    templates = VIEW_TEMPLATES[bool(cfg.get("view_dependent_prompt_front", False))]
    for direction, template in templates.items():
        manual = cfg.get(f"prompt_{direction}", None)
        if manual:
            named[f"{prefix}.prompt_{direction}"] = str(manual)
        elif not prompt.startswith("lib:"):
            named[f"{prefix}.prompt (its {direction} view prompt)"] = template.format(prompt)
    return named


def processor_prompts_by_key(processor, prefix: str = "system.prompt_processor") -> Dict[str, str]:
    """Every prompt a constructed threestudio prompt processor encodes (its prompt, negative prompt and
    view prompts), keyed by the config key the user would change (a templated view prompt counts as
    ``prompt``)."""
    named = {f"{prefix}.prompt": processor.prompt, f"{prefix}.negative_prompt": processor.negative_prompt}
    for direction, prompt in zip(processor.directions, processor.prompts_vd):
        if processor.cfg.get(f"prompt_{direction.name}", None):
            named[f"{prefix}.prompt_{direction.name}"] = prompt
        else:
            named[f"{prefix}.prompt (its {direction.name} view prompt)"] = prompt
    return named
