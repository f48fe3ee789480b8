"""System prompts and request templates, one Jinja2 file per role, rendered with the machine's
profile and policy. No prompt text lives in Python code.

Every text that did not come from the machine's owners — job descriptions, proposal titles and
evidence, ledger memos, remembered facts, and the stakeholder's own question (their words, not the
system's) — goes through ``untrusted``, the one fence: it is shown as data with its source, and
anything in it that looks like the fence is defused, so it cannot close the fence and speak as the
system. Ids and other names shown outside the fence are checked at the edge (``core.ids``).
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

__all__ = ["ROLES", "render", "unfence", "untrusted"]

ROLES = ("bidding", "chat", "governance")
_DIR = Path(__file__).parent


def untrusted(value: object, source: str = "outside") -> str:
    """Fence ``value`` as data from ``source``; defuse fence look-alikes inside it (and in the
    source, which may name an outsider)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    text = text.replace("<untrusted", "‹untrusted").replace("</untrusted", "‹/untrusted")
    source = source.replace('"', "'").replace("<", "‹").replace(">", "›").replace("\n", " ")
    return f'<untrusted source="{source}">\n{text}\n</untrusted>'


_FENCED = re.compile(r'<untrusted source="[^"]*">\n(.*?)\n</untrusted>', re.S)


def unfence(text: str) -> str:
    """What a person wrote, without the fence around it (to show them their own words back)."""
    m = _FENCED.search(text)
    return m.group(1) if m else text


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
