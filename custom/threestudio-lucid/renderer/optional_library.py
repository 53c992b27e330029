"""The libraries behind the CUDA rasterizer backends, imported lazily: the plugin never needs them,
a machine without them still lists the backends, and selecting one there fails with one line
that names the backend, why it is unavailable and how to install it."""
import importlib
from typing import Any, Callable, Optional

import torch

from ..errors import ConfigError


class OptionalLibrary:
    """``load()`` imports ``module`` once per process (then ``check(module)``, which raises if the
    library is importable but unusable, e.g. gsplat without its compiled CUDA code) and remembers the
    module or the reason it failed."""

    def __init__(self, backend: str, module: str, install_hint: str,
                 check: Optional[Callable[[Any], None]] = None):
        self.backend = backend
        self.module_name = module
        self.install_hint = install_hint
        self.check = check
        self.tried = False
        self.module: Any = None
        self.error: Optional[str] = None

    def load(self) -> Any:
        if not self.tried:
            self.tried = True
            try:
                module = importlib.import_module(self.module_name)
                if self.check is not None:
                    self.check(module)
                self.module = module
            except Exception as exc:  # not installed, a broken build, no CUDA toolkit for a JIT build
                lines = [line for line in str(exc).strip().splitlines() if line.strip()]
                self.error = f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:300]
        return self.module

    def available(self) -> bool:
        """Usable here: a CUDA device and the library (consulted by ``backend: auto``)."""
        return torch.cuda.is_available() and self.load() is not None

    def require_module(self) -> Any:
        """The module; a ``ConfigError`` naming the backend and the install step if it is unavailable
        (the renderer calls this when it is configured, before any rendering)."""
        if self.load() is None:
            raise ConfigError(
                f"system.renderer.backend='{self.backend}' needs {self.module_name}, which is unavailable "
                f"({self.error}); {self.install_hint}, or use system.renderer.backend=auto"
            )
        return self.module

    def require(self, tensor: torch.Tensor) -> Any:
        """The module, for rendering ``tensor``'s device; a ``ConfigError`` if that cannot work."""
        module = self.require_module()
        if tensor.device.type != "cuda":
            raise ConfigError(
                f"system.renderer.backend='{self.backend}' renders CUDA tensors, got {tensor.device}; "
                f"use system.renderer.backend=auto (or cpu) on a machine without a GPU"
            )
        return module
