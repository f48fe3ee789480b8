"""System prompts and request templates, one Jinja2 file per role, rendered with the machine's
profile and policy. No prompt text lives in Python code.

Outside text (job descriptions, peer messages, remembered facts, chat) goes through the
``untrusted`` filter: it is fenced as data with its source, and anything in it that looks like the
fence is defused, so it cannot close the fence and speak as the system.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

__all__ = ["ROLES", "render", "untrusted"]

ROLES = ("bidding", "chat", "governance")
_DIR = Path(__file__).parent


def untrusted(value: object, source: str = "outside") -> str:
    """Fence ``value`` as data from ``source``; defuse fence look-alikes inside it."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    text = text.replace("<untrusted", "‹untrusted").replace("</untrusted", "‹/untrusted")
    return f'<untrusted source="{source}">\n{text}\n</untrusted>'


@cache
def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(_DIR), undefined=StrictUndefined, autoescape=False,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)
    env.filters["untrusted"] = untrusted
    env.filters["units"] = _units
    return env


def _units(micros: int | None) -> str:
    from core.money import format_units

    return "none" if micros is None else format_units(micros)


def render(name: str, **context: Any) -> str:
    """Render ``prompts/{name}.md.j2``; a missing variable is an error, not an empty string."""
    return _env().get_template(f"{name}.md.j2").render(**context).strip()
