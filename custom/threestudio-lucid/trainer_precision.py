"""The ``trainer.precision`` values ``lucid-gaussian-system`` trains under, decided in one place.

``lucid-launch`` checks it before anything loads (``host/preflight.py`` imports this module on its own,
so it imports nothing heavy); the system checks it again when fit starts, which is where the check
runs inside threestudio (its launch.py builds the Trainer after the system).

- ``32-true`` (the configs' choice): the Gaussians train in float32; Stable Diffusion runs in fp16 all
  the same (``system.guidance.half_precision_weights``), the renderer in float32.
- ``bf16-mixed``: autocast to bfloat16 around the step; the renderer switches it off for itself
  (``renderer/precision.py``), bfloat16's range needs no loss scaling.
- ``16-mixed`` (threestudio's ProlificDreamer NeRF config uses it) is refused: its GradScaler multiplies
  the screen-space gradients that densification compares with ``densify_grad_threshold`` (the loss
  scale, 65536 at first, would densify everything), and an overflow step, which GradScaler expects and
  skips, stops the numerical guard. The half and double "-true" precisions would cast the Gaussians
  themselves.
"""
from typing import Any

SUPPORTED = ("32-true", "bf16-mixed")
SYSTEM_TYPE = "lucid-gaussian-system"
# Lightning's shorthands for the same settings
ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true", "half": "16-true",
           "double": "64-true"}


def normalized(precision: Any) -> str:
    text = str(precision).strip()
    return ALIASES.get(text, text)


def precision_rule(precision: Any) -> str:
    """Why ``precision`` cannot train ``lucid-gaussian-system`` and what to use instead (the rest of a
    one-line error after ``trainer.precision=<value>``), or "" when it can."""
    value = normalized(precision)
    if value in SUPPORTED:
        return ""
    if value == "16-mixed":
        why = ("its GradScaler scales the screen-space gradients densification compares with "
               "densify_grad_threshold, and its overflow steps stop the numerical guard")
    elif value.endswith("-true"):
        why = f"it casts the Gaussians themselves to {value[:-len('-true')]}-bit floats"
    else:
        why = f"it is not one of {', '.join(SUPPORTED)}"
    return (f"cannot train {SYSTEM_TYPE}: {why}; use trainer.precision=32-true (Stable Diffusion still runs "
            f"in fp16 with system.guidance.half_precision_weights=true) or bf16-mixed.")
