"""Typing names threestudio components ``import *`` (jaxtyping shapes, Tensor, DictConfig)."""
from dataclasses import dataclass, field  # noqa: F401
from typing import (  # noqa: F401
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Literal,
    NamedTuple,
    NewType,
    Optional,
    Sized,
    Tuple,
    Type,
    TypeVar,
    Union,
)

from jaxtyping import Bool, Complex, Float, Inexact, Int, Integer, Num, Shaped, UInt  # noqa: F401
from omegaconf import DictConfig  # noqa: F401
from torch import Tensor  # noqa: F401
