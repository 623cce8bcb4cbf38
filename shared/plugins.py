"""Plugins named as `module:function` (runtime factories of agents, user metrics of a tune): the
one format check and the one import, so both name a bad reference the same way."""
from __future__ import annotations

import importlib
import re
from typing import Any, Callable

FUNCTION_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


class PluginNotFound(Exception):
    """The module cannot be imported or has no such function; the message says which."""


def is_function_path(value: object) -> bool:
    return isinstance(value, str) and FUNCTION_PATH.fullmatch(value) is not None


def import_function(path: str) -> Callable[..., Any]:
    module_name, func = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raises while importing
        raise PluginNotFound(f"cannot import module {module_name!r} ({type(exc).__name__}: {exc})") from exc
    fn = getattr(module, func, None)
    if not callable(fn):
        raise PluginNotFound(f"module {module_name!r} has no function {func!r}")
    return fn
