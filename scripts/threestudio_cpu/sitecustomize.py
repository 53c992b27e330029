"""Run a real threestudio checkout on a CPU machine, without editing any of its files.

Put this folder first on ``PYTHONPATH`` and set ``LUCID_THREESTUDIO_CPU=1``: Python imports
``sitecustomize`` at start-up in every process, subprocesses and the prompt processor's spawned
child included. It then

1. stands in for the modules threestudio imports at ``import threestudio`` that cannot be installed
   on a CPU machine (tiny-cuda-nn, nerfacc's CUDA ops, nvdiffrast, ...; see ``STUBBED``), where they
   are missing and only for imports made by threestudio's own files (library probes such as
   diffusers' ``find_spec("xformers")`` still see them as absent). A stand-in imports, and any use
   of it raises ``RuntimeError`` naming the module, so a code path that really needs one fails
   loudly instead of computing something wrong. The plugin never uses them;
2. applies the two CPU patches threestudio needs (the contract's section "Observed running the plugin
   under threestudio's own launch.py"): ``threestudio.utils.misc.get_device()`` returns the CPU when
   CUDA is absent, and ``pytorch_lightning.Trainer`` turns launch.py's hard-coded
   ``accelerator="gpu", devices=-1`` into ``accelerator="cpu", devices=1``.

One installed module is stood in for as well, for every importer: a torchvision built for CUDA
beside a torch built without it (on a CPU machine, threestudio's requirements pull PyPI's CUDA
torchvision through controlnet_aux, taming-transformers and timm). Its compiled ops cannot load, so
``import torchvision`` fails with "operator torchvision::nms does not exist" for everyone, torchmetrics
and so ``import pytorch_lightning`` included. A user fixes it with the CPU build that matches the CPU
torch (PyTorch's CPU wheel index); where that cannot be had, the stand-in keeps the imports working,
and stands in for controlnet_aux too, which calls torchvision at import time.

Nothing happens without the variable; other installed modules are always used as they are, and the
patches change nothing where CUDA is available.
"""
import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
import types

# Modules threestudio imports at import time that need CUDA or cannot be installed here
# (torchvision: PyPI's wheel does not match the local CPU torch build; igl: libigl >= 2.6 renamed
# the functions threestudio imports).
STUBBED = tuple(
    name for name in os.environ.get(
        "LUCID_THREESTUDIO_STUBS",
        "tinycudann,nerfacc,nvdiffrast,torchvision,igl,envlight,xatlas,pysdf,pymeshlab,mcubes,taming,clip,"
        "controlnet_aux,bitsandbytes,xformers,open_clip,gradio,mediapipe",
    ).split(",") if name
)


class _Unavailable:
    """Any attribute, call, subclass or index of a stand-in; using it raises."""

    def __init__(self, path):
        self._path = path

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _Unavailable(f"{self._path}.{name}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(
            f"{self._path} is a CPU stand-in (scripts/threestudio_cpu/sitecustomize.py): "
            "this code path needs the real module and a GPU."
        )

    def __mro_entries__(self, bases):
        return (object,)

    def __getitem__(self, item):
        return self

    def __or__(self, other):
        return self

    __ror__ = __or__


# What a stand-in may do: threestudio's cleanup() frees tiny-cuda-nn's GPU scratch memory after every
# prompt encoding and validation step; with no GPU there is nothing to free.
NO_OPS = {"tinycudann.free_temporary_memory"}


def _no_op(*args, **kwargs):
    return None


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        path = f"{self.__name__}.{name}"
        return _no_op if path in NO_OPS else _Unavailable(path)


class _StubLoader(importlib.abc.Loader):
    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []  # a package, so submodule imports resolve to stand-ins too
        module.__file__ = None
        module.LUCID_CPU_STAND_IN = True
        return module

    def exec_module(self, module):
        pass


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then a patch function on the fresh module."""

    def __init__(self, loader, patch):
        self._loader, self._patch = loader, patch

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._patch(module)


def _patch_misc(module):
    import torch

    real_get_device = module.get_device

    def get_device():
        return real_get_device() if torch.cuda.is_available() else torch.device("cpu")

    module.get_device = get_device


def _patch_lightning(module):
    import torch

    trainer_cls = module.Trainer
    real_init = trainer_cls.__init__

    def __init__(self, *args, **kwargs):
        if not torch.cuda.is_available() and kwargs.get("accelerator") == "gpu":
            kwargs["accelerator"], kwargs["devices"] = "cpu", 1
        real_init(self, *args, **kwargs)

    trainer_cls.__init__ = __init__


PATCHES = {"threestudio.utils.misc": _patch_misc, "pytorch_lightning": _patch_lightning}

_UNLOADABLE = {}


def _unloadable(top: str, finder) -> bool:
    """Whether the installed ``top`` cannot be imported with this torch: torchvision, when its build
    says CUDA (``__version__`` ends ``+cuXXX``) and torch was built without CUDA, decided from its
    ``version.py`` text without importing it (importing it is what fails); and then controlnet_aux
    too, which calls ``torchvision.transforms.ToTensor()`` at import time."""
    if top == "controlnet_aux":
        top = "torchvision"
    if top != "torchvision":
        return False
    if top not in _UNLOADABLE:
        _UNLOADABLE[top] = False
        spec = finder._real_spec(top, None, None)
        for location in (spec.submodule_search_locations or []) if spec is not None else []:
            try:
                with open(os.path.join(location, "version.py"), encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                continue
            match = re.search(r"^__version__ = ['\"][^'\"+]*\+cu", text, re.MULTILINE)
            if match:
                import torch

                _UNLOADABLE[top] = torch.version.cuda is None
            break
    return _UNLOADABLE[top]


def _imported_by_threestudio() -> bool:
    """Whether the import being resolved comes from a file of the threestudio checkout (library
    probes such as diffusers' ``find_spec("xformers")`` must keep seeing the module as absent)."""
    root = os.environ.get("THREESTUDIO_DIR", "")
    if not root:
        return False
    root = os.path.join(os.path.realpath(root), "")
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith("<frozen"):
            return os.path.realpath(filename).startswith(root)
        frame = frame.f_back
    return False


class _Finder(importlib.abc.MetaPathFinder):
    def _real_spec(self, fullname, path, target):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                return spec
        return None

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.split(".")[0]
        if top in STUBBED:
            parent = sys.modules.get(top)
            if parent is not None and getattr(parent, "LUCID_CPU_STAND_IN", False):
                return importlib.machinery.ModuleSpec(fullname, _StubLoader(), is_package=True)
            if parent is None and _imported_by_threestudio() and self._real_spec(fullname, path, target) is None:
                return importlib.machinery.ModuleSpec(fullname, _StubLoader(), is_package=True)
            if parent is None and fullname == top and _unloadable(top, self):
                return importlib.machinery.ModuleSpec(fullname, _StubLoader(), is_package=True)
            return None
        patch = PATCHES.get(fullname)
        if patch is None:
            return None
        spec = self._real_spec(fullname, path, target)
        if spec is not None:
            spec.loader = _PatchingLoader(spec.loader, patch)
        return spec


if os.environ.get("LUCID_THREESTUDIO_CPU", "") not in ("", "0"):
    sys.meta_path.insert(0, _Finder())
