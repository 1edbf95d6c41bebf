"""``extra_sbatch_args`` read the way sbatch reads them, then checked against an allow-list.

sbatch parses its options (command line and ``#SBATCH`` lines alike) with glibc's
``getopt_long``: a long option may be abbreviated to any unambiguous prefix (``--out`` is
``--output``), takes its value after ``=`` or as the next word (a required value only), and short
options take theirs attached (``-ofile``) or as the next word (``-o file``). Checking the text
of an argument against a list of names therefore misses ``--out=/any/file``: ``parse`` resolves
every argument to the option sbatch would see, and the renderer writes that canonical form
(``--name=value``), never the user's spelling.

``SBATCH_OPTIONS`` is sbatch 22.05's table, read off the binary (every ``--<letter>`` prefix
lists its candidates in getopt's ambiguity message; ``--<name>`` without a value says whether
one is required). Where a prefix names several options sbatch may still resolve it (when they
share a handler); here any prefix that is not unique is refused: a 422 is always safer than a
guess.

``NEVER_ALLOWED`` names the options no allow-list may contain: those pyrecover sets itself, and
those that run code, read or write files of the user's choice, change the job's identity, time,
environment or cluster, or change how sbatch itself behaves. ``DEFAULT_SBATCH_ALLOW`` is the
small set allowed when the admin configures nothing (``Settings.sbatch_allow``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Arg = Literal["none", "required", "optional"]

SBATCH_OPTIONS: dict[str, Arg] = {
    "account": "required", "acctg-freq": "required", "array": "required", "batch": "required",
    "bb": "required", "bbf": "required", "begin": "required", "chdir": "required",
    "cluster": "required", "cluster-constraint": "required", "clusters": "required",
    "comment": "required", "constraint": "required", "container": "required", "context": "required",
    "contiguous": "none", "core-spec": "required", "cores-per-socket": "required",
    "cpu-freq": "required", "cpus-per-gpu": "required", "cpus-per-task": "required",
    "deadline": "required", "delay-boot": "required", "dependency": "required",
    "distribution": "required", "error": "required", "exclude": "required", "exclusive": "optional",
    "export": "required", "export-file": "required", "extra-node-info": "required",
    "get-user-env": "optional", "gid": "required", "gpu-bind": "required", "gpu-freq": "required",
    "gpus": "required", "gpus-per-node": "required", "gpus-per-socket": "required",
    "gpus-per-task": "required", "gres": "required", "gres-flags": "required", "help": "none",
    "hint": "required", "hold": "none", "ignore-pbs": "none", "input": "required",
    "job-name": "required", "kill-on-invalid-dep": "required", "licenses": "required",
    "mail-type": "required", "mail-user": "required", "mcs-label": "required", "mem": "required",
    "mem-bind": "required", "mem-per-cpu": "required", "mem-per-gpu": "required",
    "mincpus": "required", "network": "required", "nice": "optional", "no-kill": "optional",
    "no-requeue": "none", "nodefile": "required", "nodelist": "required", "nodes": "required",
    "ntasks": "required", "ntasks-per-core": "required", "ntasks-per-gpu": "required",
    "ntasks-per-node": "required", "ntasks-per-socket": "required", "ntasks-per-tres": "required",
    "open-mode": "required", "output": "required", "overcommit": "none", "oversubscribe": "none",
    "parsable": "none", "partition": "required", "power": "required", "prefer": "required",
    "priority": "required", "profile": "required", "propagate": "optional", "qos": "required",
    "quiet": "none", "reboot": "none", "requeue": "none", "reservation": "required",
    "signal": "required", "sockets-per-node": "required", "spread-job": "none",
    "switches": "required", "tasks-per-node": "required", "test-only": "none",
    "thread-spec": "required", "threads-per-core": "required", "time": "required",
    "time-min": "required", "tmp": "required", "uid": "required", "usage": "none",
    "use-min-nodes": "none", "verbose": "none", "version": "none", "wait": "none",
    "wait-all-nodes": "required", "wckey": "required", "wrap": "optional",
}  # fmt: skip
"""Every long option of sbatch 22.05 and whether it takes a value."""

SHORT_OPTIONS: dict[str, str] = {
    "a": "array", "A": "account", "b": "begin", "B": "extra-node-info", "c": "cpus-per-task",
    "C": "constraint", "d": "dependency", "D": "chdir", "e": "error", "F": "nodefile",
    "G": "gpus", "h": "help", "H": "hold", "i": "input", "J": "job-name", "k": "no-kill",
    "L": "licenses", "m": "distribution", "M": "clusters", "n": "ntasks", "N": "nodes",
    "o": "output", "O": "overcommit", "p": "partition", "q": "qos", "Q": "quiet",
    "s": "oversubscribe", "S": "core-spec", "t": "time", "v": "verbose", "V": "version",
    "w": "nodelist", "W": "wait", "x": "exclude",
}  # fmt: skip
"""sbatch 22.05's short options and the long option each stands for (same value rule)."""

OWNED_OPTIONS = frozenset(
    {
        "job-name", "nodes", "ntasks-per-node", "gpus-per-node", "cpus-per-task", "mem", "time",
        "partition", "account", "qos", "constraint", "output", "error", "open-mode", "chdir",
        "signal", "requeue", "no-requeue", "dependency",
    }
)  # fmt: skip
"""Set by the renderer from the run's fields: a second value would silently win or clash. The job
name and the attempt's files are how the controller finds and follows its jobs."""

NEVER_ALLOWED: dict[str, str] = {
    **{name: "pyrecover sets it from the run's fields" for name in sorted(OWNED_OPTIONS)},
    "export": "sets the job's environment past the env rules",
    "export-file": "reads the job's environment from a file",
    "get-user-env": "loads a login environment into the job",
    "input": "reads a file of the user's choice as the script's stdin",
    "wrap": "replaces the script with a command line",
    "bb": "burst-buffer directives run staging commands",
    "bbf": "reads burst-buffer directives from a file",
    "container": "runs the job inside an OCI bundle of the user's choice",
    "uid": "runs the job as another user",
    "gid": "runs the job as another group",
    "clusters": "submits to another cluster, where the controller cannot follow the job",
    "cluster": "as --clusters",
    "cluster-constraint": "chooses the cluster",
    "array": "turns one attempt into many jobs",
    "time-min": "lets SLURM shorten the time limit the worker plans its stop for",
    "deadline": "lets SLURM drop the job behind the controller's back",
    "begin": "defers the start behind the controller's back",
    "hold": "submits the job held",
    "kill-on-invalid-dep": "changes how the pre-queued successor's dependency behaves",
    "ntasks": "conflicts with the ranks pyrecover starts",
    "tasks-per-node": "conflicts with the ranks pyrecover starts",
    "nodefile": "reads a file of the user's choice",
    "propagate": "propagates the controller's resource limits",
    "parsable": "changes sbatch's output, which the controller parses",
    "wait": "makes sbatch block the controller until the job ends",
    "test-only": "submits nothing",
    "ignore-pbs": "changes how sbatch reads the script",
    "batch": "chooses the batch host's features",
    "acctg-freq": "changes accounting and the signal of the profiling plugin",
    "profile": "makes the profiling plugin write files",
    "priority": "an admin's setting",
    "reboot": "reboots the nodes",
    "power": "power management of the nodes",
    "help": "prints help instead of submitting",
    "usage": "prints usage instead of submitting",
    "version": "prints the version instead of submitting",
    "quiet": "changes sbatch's output, which the controller parses",
    "verbose": "changes sbatch's output, which the controller parses",
    "mcs-label": "changes the job's security label",
    "context": "changes the job's security context",
    "network": "chooses network resources (switch windows) the cluster's admin manages",
}
"""Options no allow-list may hold, with the reason (the settings refuse such an allow-list)."""

DEFAULT_SBATCH_ALLOW: tuple[str, ...] = (
    "exclusive",
    "gres",
    "gres-flags",
    "gpus-per-task",
    "gpu-bind",
    "reservation",
    "mail-type",
    "mail-user",
    "comment",
    "exclude",
    "nodelist",
    "nice",
    "hint",
)
"""Allowed when the admin configures nothing: node choice and sharing, generic resources,
reservations, mail, a comment. Nothing here names a file, an environment or a program."""

# What may follow '=' (sbatch parses these lines itself, not the shell): no whitespace, quotes,
# '$', '`', ';', '%' (sbatch expands %j and friends in file names) or newlines; '[' and ']' for
# host lists (node[01-04]). ASCII only: '\w' and '\d' would admit other scripts' letters and digits.
VALUE_RE = re.compile(r"^[A-Za-z0-9_./+@:=,\[\]-]+$", re.ASCII)
_LONG_RE = re.compile(r"^--([A-Za-z0-9][A-Za-z0-9-]*)(?:=(.*))?$", re.ASCII | re.DOTALL)
_VALUE_CLASS = r"[A-Za-z0-9_./+@:=,\[\]-]"
MAX_ARG_CHARS = 1024


@dataclass(frozen=True)
class SbatchOption:
    """One option as sbatch reads it: the canonical long name and its value (``None``: no value)."""

    name: str
    value: str | None

    def render(self) -> str:
        return f"--{self.name}" if self.value is None else f"--{self.name}={self.value}"


def resolve_long(prefix: str) -> str:
    """The long option ``--prefix`` names: the exact name, else the only option it begins."""
    if prefix in SBATCH_OPTIONS:
        return prefix
    candidates = sorted(name for name in SBATCH_OPTIONS if name.startswith(prefix))
    if not candidates:
        raise ValueError(f"--{prefix} is not an sbatch option")
    if len(candidates) > 1:
        shown = ", ".join(f"--{c}" for c in candidates[:6])
        raise ValueError(f"--{prefix} is ambiguous (sbatch could read {shown}): spell the option out")
    return candidates[0]


def parse(args: Sequence[str]) -> list[SbatchOption]:
    """The options sbatch would read from ``args``, or ``ValueError`` naming the argument.

    Each argument is one option as it would stand on an ``#SBATCH`` line: ``--name``,
    ``--name=value``, ``--name value``, ``-X``, ``-Xvalue`` or ``-X value`` (a separate value only
    for an option that requires one, as getopt reads it), with ``--name`` any unambiguous prefix.
    """
    return [parse_one(arg) for arg in args]


def parse_one(arg: str) -> SbatchOption:
    if len(arg) > MAX_ARG_CHARS:
        raise ValueError(f"each extra sbatch argument must be at most {MAX_ARG_CHARS} characters")
    word, sep, separate = arg.partition(" ")
    if sep and (not separate or " " in separate):
        raise ValueError(f"{arg[:80]!r}: one option per argument, its value after '=' or one space")
    value: str | None
    if m := _LONG_RE.fullmatch(word):
        name, value = resolve_long(m[1]), m[2]
        arg_kind = SBATCH_OPTIONS[name]
        if value is not None and arg_kind == "none":
            raise ValueError(f"--{name} takes no value (got {arg[:80]!r})")
        if sep:
            if value is not None or arg_kind != "required":
                raise ValueError(f"--{name}: a separate value only for an option that requires one")
            value = separate
        elif value is None and arg_kind == "required":
            raise ValueError(f"--{name} needs a value")
    elif len(word) >= 2 and word[0] == "-" and word[1] != "-":
        letter, rest = word[1], word[2:]
        if letter not in SHORT_OPTIONS:
            raise ValueError(f"-{letter} is not an sbatch option (in {arg[:80]!r})")
        name = SHORT_OPTIONS[letter]
        arg_kind = SBATCH_OPTIONS[name]
        if arg_kind == "none":
            if rest or sep:
                # getopt would read '-Hx' as '-H -x': a cluster of flags is not worth the risk.
                raise ValueError(f"write -{letter} on its own (got {arg[:80]!r})")
            value = None
        elif sep:
            if rest or arg_kind != "required":
                raise ValueError(f"-{letter}: a separate value only for an option that requires one")
            value = separate
        elif rest:
            value = rest
        elif arg_kind == "required":
            raise ValueError(f"-{letter} needs a value")
        else:
            value = None
    else:
        raise ValueError(f"extra sbatch argument {arg[:80]!r} is not an option (it must start with '-')")
    if value is not None and not VALUE_RE.fullmatch(value):
        raise ValueError(
            f"the value of --{name} ({value[:80]!r}) may contain only ASCII letters, digits and "
            "_ . / + @ : = , - [ ]"
        )
    return SbatchOption(name, value)


def check(options: Iterable[SbatchOption], allow: Iterable[str] | None) -> None:
    """``ValueError`` for an option never allowed, or (``allow`` given) not on the allow-list."""
    allowed = None if allow is None else set(allow)
    for option in options:
        why = NEVER_ALLOWED.get(option.name)
        if why is not None:
            raise ValueError(f"--{option.name} is not allowed: {why}")
        if allowed is not None and option.name not in allowed:
            raise ValueError(
                f"--{option.name} is not on this controller's allow-list (an admin can add it to the "
                "sbatch_allow setting)"
            )


def check_allow_list(entries: Iterable[str]) -> list[str]:
    """The admin's allow-list (canonical long names), or ``ValueError`` for an unknown or forbidden one."""
    out = []
    for entry in entries:
        name = entry.removeprefix("--")
        if name not in SBATCH_OPTIONS:
            raise ValueError(f"sbatch_allow: {entry!r} is not an sbatch option (write the full long name)")
        if name in NEVER_ALLOWED:
            raise ValueError(f"sbatch_allow: --{name} can never be allowed: {NEVER_ALLOWED[name]}")
        out.append(name)
    return out


def _prefix_regex(name: str, shortest: int) -> str:
    """``exclusive`` from 4 characters → ``excl(?:u(?:s(?:i(?:v(?:e)?)?)?)?)?`` (every spelling)."""
    # Option names hold only [a-z0-9-]: nothing to escape (and '\\-' is no valid ECMA escape).
    head, tail = name[:shortest], name[shortest:]
    nested = ""
    for char in reversed(tail):
        nested = f"(?:{char}{nested})?"
    return head + nested


def _shortest_unique(name: str) -> int:
    for n in range(1, len(name) + 1):
        prefix = name[:n]
        if prefix == name or all(not o.startswith(prefix) for o in SBATCH_OPTIONS if o != name):
            return n
    return len(name)


def schema_pattern(allow: Iterable[str]) -> str | None:
    """A regular expression (ECMA and Python alike) that matches exactly the arguments ``parse``
    reads as an option on ``allow`` (``None`` when nothing is allowed): the OpenAPI document states
    it for ``extra_sbatch_args``."""
    value = f"{_VALUE_CLASS}+"
    branches = []
    for name in sorted(set(allow) - set(NEVER_ALLOWED)):
        kind = SBATCH_OPTIONS[name]
        long = "--" + _prefix_regex(name, _shortest_unique(name))
        shorts = "".join(k for k, v in sorted(SHORT_OPTIONS.items()) if v == name)
        if kind == "none":
            branches.append(long)
            if shorts:
                branches.append(f"-[{shorts}]")
        elif kind == "optional":
            branches.append(f"{long}(?:={value})?")
            if shorts:
                branches.append(f"-[{shorts}](?:{value})?")
        else:
            branches.append(f"{long}(?:=| ){value}")
            if shorts:
                branches.append(f"-[{shorts}] ?{value}")
    if not branches:
        return None
    return "^(?:" + "|".join(branches) + ")$"
