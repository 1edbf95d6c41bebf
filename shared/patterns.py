"""Regular expressions that *are* the rules for run fields, so the OpenAPI document can state them.

A rule written as code ("positive", "at most 366 days", "no '..' component") is invisible to a
client reading the schema, and a generator that trusts the schema then sends values the server
refuses. Each pattern here is the whole rule for its field: the validator matches it with
``re.fullmatch`` and the document carries the same text as ``pattern``. They use only syntax
that means the same in Python and in ECMA-262 (what JSON Schema validators speak): anchors,
character classes, groups, alternation and counted repetition.
"""

from __future__ import annotations


def int_range(lo: int, hi: int) -> str:
    """A group matching the decimal numbers ``lo..hi`` written without leading zeros."""
    if not 0 <= lo <= hi:
        raise ValueError(f"bad range {lo}..{hi}")
    parts: list[str] = []
    for n in range(len(str(lo)), len(str(hi)) + 1):
        a = max(lo, 10 ** (n - 1) if n > 1 else 0)
        b = min(hi, 10**n - 1)
        if a <= b:
            parts += _same_length(str(a), str(b))
    return "(?:" + "|".join(parts) + ")"


def _same_length(a: str, b: str) -> list[str]:
    if a == b:
        return [a]
    if len(a) == 1:
        return [f"[{a}-{b}]"]
    i = 0
    while a[i] == b[i]:
        i += 1
    prefix, a, b = a[:i], a[i:], b[i:]
    rest = len(a) - 1
    if set(a[1:]) <= {"0"} and set(b[1:]) <= {"9"}:
        return [f"{prefix}[{a[0]}-{b[0]}]" + "[0-9]" * rest]
    out = [prefix + a[0] + s for s in _same_length(a[1:], "9" * rest)]
    if int(b[0]) - int(a[0]) > 1:
        out.append(f"{prefix}[{int(a[0]) + 1}-{int(b[0]) - 1}]" + "[0-9]" * rest)
    out += [prefix + b[0] + s for s in _same_length("0" * rest, b[1:])]
    return out


def number(lo: int, hi: int) -> str:
    """``lo..hi`` with any number of leading zeros (as ``int()`` reads them)."""
    if lo == 0:
        return f"(?:0+|0*{int_range(1, hi)})" if hi > 0 else "0+"
    return f"0*{int_range(lo, hi)}"


MAX_TIME_LIMIT_S = 366 * 86_400
_MIN = MAX_TIME_LIMIT_S // 60  # 527040
_HOURS = MAX_TIME_LIMIT_S // 3600  # 8784
_SS = "[0-5][0-9]"
_SS_NONZERO = "(?:0[1-9]|[1-5][0-9])"
_HH = "(?:[01][0-9]|2[0-3])"
_HHMMSS_NONZERO = f"(?:00:00:{_SS_NONZERO}|00:{_SS_NONZERO}:{_SS}|(?:0[1-9]|1[0-9]|2[0-3]):{_SS}:{_SS})"

TIME_LIMIT_PATTERN = (
    "^(?:"
    + "|".join(
        [
            number(1, _MIN),  # minutes, as sbatch --time reads a bare number
            f"{number(1, MAX_TIME_LIMIT_S)}s",
            f"{number(1, _MIN)}m",
            f"{number(1, _HOURS)}h",
            f"{number(1, 366)}d",
            # MM:SS
            f"0+:{_SS_NONZERO}",
            f"{number(1, _MIN - 1)}:{_SS}",
            f"0*{_MIN}:00",
            # HH:MM:SS
            f"0+:(?:00:{_SS_NONZERO}|{_SS_NONZERO}:{_SS})",
            f"{number(1, _HOURS - 1)}:{_SS}:{_SS}",
            f"0*{_HOURS}:00:00",
            # D-HH:MM:SS
            f"0+-{_HHMMSS_NONZERO}",
            f"{number(1, 365)}-{_HH}:{_SS}:{_SS}",
            "0*366-00:00:00",
        ]
    )
    + ")$"
)
"""A time limit as text: minutes (``10``), ``45s``/``2m``/``1h``/``1d``, ``MM:SS``, ``HH:MM:SS`` or
``D-HH:MM:SS`` (seconds and minutes of the clock forms are two digits below 60, hours of the day
form below 24); positive and at most 366 days."""

_SEGMENT_CHARS = "A-Za-z0-9_+@:=,"  # and "-", written last in each class
_GLOB_CHARS = "*?\\[\\]"
_REGEX_SYNTAX = set("^$\\.*+?()[]{}|")


def _segment(glob: bool, *, nonempty: bool = False) -> str:
    """One path segment: anything over the alphabet except exactly '..' — one with a non-dot
    character, three dots or more, one dot, or (unless ``nonempty``) nothing ('a//b', a leading '/')."""
    extra = _GLOB_CHARS if glob else ""
    plain, any_ = f"[{_SEGMENT_CHARS}{extra}-]", f"[{_SEGMENT_CHARS}{extra}.-]"
    last = "\\." if nonempty else "\\.?"
    return f"(?:\\.*{plain}{any_}*|\\.{{3,}}|{last})"


def _body(glob: bool) -> str:
    return f"{_segment(glob)}(?:/{_segment(glob)})*"


PATH_PATTERN = f"^{_body(False)}$"
"""A path of ordinary file-name characters without a '..' component."""
GLOB_PATTERN = f"^{_body(True)}$"
"""As ``PATH_PATTERN``, with the glob characters ``* ? [ ]`` (a dataset may be ``data/*.parquet``)."""


def under_roots_pattern(roots: list[str], *, glob: bool = False) -> str:
    """Paths that are relative or lie lexically under one of ``roots`` (``PATH_PATTERN`` otherwise)."""
    rest = f"(?:/{_segment(glob)})*"
    branches = [f"{_segment(glob, nonempty=True)}{rest}"]  # relative: the first segment is not empty
    for root in roots:
        text = root.rstrip("/")
        if not text:  # "/": every absolute path
            branches.append(f"/{_body(glob)}")
            continue
        escaped = "".join(f"\\{c}" if c in _REGEX_SYNTAX else c for c in text)
        branches.append(f"{escaped}{rest}")
    return "^(?:" + "|".join(branches) + ")$"
