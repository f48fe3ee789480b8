"""Names that reach a model outside the fence: job, machine and region ids, capabilities,
materials. They come from outside (a requester's call, an API request, a file name on a printer),
so they are checked at the edge against a strict alphabet: a name cannot carry a sentence, and
only free text (a description, a title, a memo) is ever shown to a model, and always fenced
(``prompts.untrusted``)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

from core.errors import InputError

__all__ = ["NAME_PATTERN", "Name", "check_name"]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9:._-]{0,127}$"
"""Letters, digits and ``: . _ -``, starting with a letter or digit, at most 128 characters: no
spaces, no quotes, no brackets, nothing that reads as an instruction or closes a fence."""

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
"""A pydantic field type for such a name."""

_NAME = re.compile(NAME_PATTERN)


def check_name(value: str, what: str) -> str:
    """``value`` if it is a name, else ``InputError`` saying what a name may hold."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise InputError(f"{what} {value!r} is not a name: 1 to 128 letters, digits, ':', '.', '_' or '-', "
                         "starting with a letter or digit")
    return value
