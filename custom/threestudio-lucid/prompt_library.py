"""threestudio's prompt library, ``load/prompt_library.json`` (relative to the working directory).

threestudio's prompt processor reads it whenever it exists, for every prompt (``lib:`` prompts pick
from its ``dreamfusion`` list); an empty or broken file ends there in a ``JSONDecodeError`` traceback.
:func:`read_prompt_library` reads it the same way and names the file instead.
"""
import json
import os
from typing import Any, Dict

from .errors import ConfigError

PROMPT_LIBRARY_PATH = os.path.join("load", "prompt_library.json")


def read_prompt_library(path: str = PROMPT_LIBRARY_PATH) -> Dict[str, Any]:
    """The library as a dict, ``{}`` when the file does not exist; one :class:`ConfigError` line when
    it is empty, not JSON, or not a JSON object."""
    if not os.path.exists(path):
        return {}
    fix = ("write it as a JSON object such as {\"dreamfusion\": [\"a DSLR photo of a corgi\", ...]}, or remove it "
           "(it is only needed for lib: prompts)")
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"The prompt library '{os.path.abspath(path)}' cannot be read ({e}): {fix}.") from None
    if not text.strip():
        raise ConfigError(f"The prompt library '{os.path.abspath(path)}' is empty: {fix}.")
    try:
        library = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"The prompt library '{os.path.abspath(path)}' is not valid JSON ({e}): {fix}.") from None
    if not isinstance(library, dict):
        raise ConfigError(f"The prompt library '{os.path.abspath(path)}' holds a JSON {type(library).__name__}, "
                          f"not an object: {fix}.")
    return library
