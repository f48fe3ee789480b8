"""A bad option told as one line that names it as the user typed it, and what it accepts.

A command builds pydantic models from its options (``MarketConfig``, ``ModelConfig``,
``NodeOptions``, ...) and the models hold the limits (``machines >= 1``), so every way of building
one is checked the same. When a model refuses a value, its ``ValidationError`` speaks of fields
(``MarketConfig.bid_window_s``); ``OPTIONS`` says which option sets each field, so the user reads
``--bid-window -5: must be greater than 0`` instead of a traceback. Typer's own checks (``min=1`` of
``--port``, ``abc`` for a number) are told the same way. pydantic is imported on the error path
only: ``tamc --help`` must not load it.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from core.errors import InvalidOption

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = ["OPTIONS", "option_error", "refusals", "usage_message"]

OPTIONS: dict[str, str] = {
    "MarketConfig.seed": "--seed",
    "MarketConfig.hours": "--hours",
    "MarketConfig.machines": "--machines",
    "MarketConfig.clock": "--clock",
    "MarketConfig.speed": "--speed",
    "MarketConfig.load": "--load",
    "MarketConfig.flat_demand": "--flat",
    "MarketConfig.broker": "--broker",
    "MarketConfig.data_dir": "--data-dir",
    "MarketConfig.bid_window_s": "--bid-window",
    "MarketConfig.memory": "--memory",
    "MarketConfig.memory_url": "--memory-url",
    "MarketConfig.life": "--life",
    "ModelConfig.model": "--model",
    "ModelConfig.base_url": "--base-url",
    "ModelConfig.api_key": "--api-key",
    "ModelConfig.fast_path": "--fast-path",
    "NodeOptions.checkpoints": "--checkpoints",
    "NodeOptions.charter": "--charter",
    "NodeOptions.octoprint": "--octoprint",
    "NodeOptions.octoprint_key": "--octoprint-key",
    "NodeOptions.inject": "--inject",
    "MachineStatus.wear_pct": "--wear",
    "MachineStatus.queue_len": "--queue",
    "MachineStatus.queue_hours": "--queue-hours",
    "MemoryConfig.url": "--memory-url",
}
"""``Model.field`` -> the option that sets it, as typed (a field the command fills from an option
it converts first, such as ``--energy-price`` in micro-units, is checked by the command). A model's
error with no entry here is not the user's option but a bug, and stays a traceback."""

_MODELS = {key.split(".")[0] for key in OPTIONS}
_SECRET = {"--api-key", "--octoprint-key"}  # named, never echoed


def option_error(exc: BaseException) -> InvalidOption | None:
    """``InvalidOption`` for a value refused by a model of ``OPTIONS`` or by typer's own check of an
    option (``min=1``, a number), else ``None``."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError) and exc.title in _MODELS:
        model = exc.title
        return InvalidOption(refusals(exc, lambda loc: _option(model, loc)))
    param, cause = getattr(exc, "param", None), exc.__cause__  # typer's BadParameter, raised from pydantic's error
    if param is not None and isinstance(cause, ValidationError):
        name = param.opts[0] if param.param_type_name == "option" and param.opts else param.display_name_raw
        return InvalidOption(refusals(cause, lambda loc: name))
    return None


def refusals(exc: ValidationError, name: Callable[[tuple[int | str, ...]], str]) -> str:
    """A ``ValidationError`` in one line: ``{name(loc)} {value}: {what it accepts}`` for each error."""
    said = []
    for error in exc.errors():
        where = name(error["loc"])
        if not where:  # the whole input: not JSON, not an object
            said.append(_accepts(error))
            continue
        said.append(f"{where} {'***' if where in _SECRET else _typed(error['input'])}: {_accepts(error)}")
    return "; ".join(said)


def usage_message(exc: Any) -> str:
    """One line for any other typer/click usage error (``exc`` has ``format_message`` and maybe
    ``ctx``): as click says it, with where to find help."""
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return " ".join(str(exc.format_message()).split()).rstrip(".") + hint


def _option(model: str, loc: tuple[int | str, ...]) -> str:
    """The option that sets the field at ``loc`` of ``model`` (or the field's path, if none does;
    ``""`` for the model as a whole)."""
    if not loc:
        return ""
    path = ".".join(str(part) for part in (model, *loc))
    return OPTIONS.get(path) or OPTIONS.get(f"{model}.{loc[0]}") or path


def _typed(value: Any) -> str:
    """A value as it would be typed on the command line: ``-1`` for -1.0, ``''`` for an empty string."""
    if isinstance(value, float):
        return f"{value:g}"
    return shlex.quote(str(value))


def _accepts(error: Any) -> str:
    """What the option accepts, from a pydantic error's type and limits."""
    ctx = error.get("ctx") or {}
    phrase = {
        "greater_than": "must be greater than {gt}",
        "greater_than_equal": "must be at least {ge}",
        "less_than": "must be less than {lt}",
        "less_than_equal": "must be at most {le}",
        "literal_error": "say {expected}",
        "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_parsing": "must be a number",
        "bool_parsing": "must be true or false",
    }.get(error["type"])
    if phrase is None:
        msg = str(error["msg"])
        return msg[:1].lower() + msg[1:]
    return phrase.format(**{key: _typed(value) if isinstance(value, float) else value for key, value in ctx.items()})
