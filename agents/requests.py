"""The one check of free text from users (descriptions, search queries): cheap, standard library only.

It runs before anything loads or is written, so text that cannot be planned, stored or shown fails at once:
a byte that is not UTF-8 (what the shell hands Python as a lone surrogate), a control character (ANSI escapes
rewrite a reviewer's terminal), a bidirectional override (text that reads differently than it is), empty
text, or text over the length limit.
"""

from __future__ import annotations

import unicodedata

#: Whitespace a description may span lines with; every other control character is refused.
_ALLOWED_CONTROLS = frozenset("\t\n\r")
#: Bidirectional embeddings, overrides and isolates: they make text display in another order than it is read.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class PlanError(ValueError):
    """The description cannot be planned; the message says what is wrong and how to fix it."""


def text_problem(text: object, *, what: str = "the description") -> str | None:
    """Why ``text`` cannot be used as a description, or ``None`` when it can (length aside).

    Args:
        text: the text as given (a ``str`` from argv carries lone surrogates for bytes that are not UTF-8).
        what: how the message names the text, e.g. ``"the description"`` or ``"the query"``.
    """
    if not isinstance(text, str):
        return f"{what} must be text, got {type(text).__name__}"
    for position, character in enumerate(text):
        category = unicodedata.category(character)
        if category == "Cs":
            byte = ord(character) - 0xDC00 if 0xDC80 <= ord(character) <= 0xDCFF else None
            shown = f"byte 0x{byte:02x}" if byte is not None else f"U+{ord(character):04X}"
            return (f"{what} is not valid UTF-8 text ({shown} at character {position + 1}); "
                    "re-type it or convert it to UTF-8 (e.g. iconv -t UTF-8)")
        if (category == "Cc" and character not in _ALLOWED_CONTROLS) or character in _BIDI_CONTROLS:
            return (f"{what} holds the control character U+{ord(character):04X} at character {position + 1}; "
                    "remove it (terminal escapes and control codes are not clinical text)")
    if not text.strip():
        return (f"{what} is empty: describe the image, e.g. 'moderate right pleural effusion, PA chest radiograph'"
                if what == "the description" else f"{what} is empty: give some words to look up")
    return None


def check_request(text: object, *, max_chars: int, what: str = "the description") -> str:
    """``text`` stripped, when it is usable text of at most ``max_chars`` characters.

    Args:
        text: the description or query.
        max_chars: the longest text accepted (the setting ``max_request_chars``).
        what: how the message names the text.

    Raises:
        PlanError: not text, not UTF-8, a control character, empty, or too long; the message says how to fix it.
    """
    problem = text_problem(text, what=what)
    if problem:
        raise PlanError(problem)
    if len(text) > max_chars:
        raise PlanError(f"{what} has {len(text)} characters, more than the limit of {max_chars}; "
                        "shorten it or raise CLINISYNTH_MAX_REQUEST_CHARS")
    return text.strip()


def printable(text: object, *, one_line: bool = False) -> str:
    """``text`` safe to show on a terminal: control characters and bidirectional overrides written as escapes.

    For what was stored before :func:`check_request` existed, or written by other tools (a trace's request).

    Args:
        text: what to show (not a ``str``: its ``str()``).
        one_line: escape newlines and tabs too (a table row).
    """
    text = text if isinstance(text, str) else str(text)
    kept = "" if one_line else "\n\t"
    return "".join(
        character.encode("unicode_escape").decode("ascii")
        if (unicodedata.category(character) in ("Cc", "Cs") and character not in kept) or character in _BIDI_CONTROLS
        else character
        for character in text
    )


__all__ = ["PlanError", "check_request", "printable", "text_problem"]
