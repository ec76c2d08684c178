"""Check a grep pattern against the regular-expression syntax Fluentd reads (Ruby's Onigmo).

Fluentd builds `Regexp.new(pattern)`; Python's `re` is not the same language. No Python
library parses Onigmo, and a Ruby interpreter is not something the controller is required to
have, so this check is written by hand and is deliberately a subset:

1. constructs Python accepts and Ruby refuses (or reads differently) are refused by name:
   `(?P<name>...)`, `(?P=name)`, `(?P>name)`, the inline flags `s` and `L`, a conditional on a
   bare group name `(?(name)...)`, and `\\N{NAME}` (in Ruby `\\N` is "not a newline");
2. Ruby's own named groups `(?<name>...)` and `\\k<name>` are read as Python's equivalents;
3. what is left must compile with Python's `re`, so a pattern using Ruby-only syntax Python
   lacks (`\\h`, `\\p{L}`, `[[:alpha:]]`...) is refused too: Levity cannot vouch for it.

The test suite cross-checks this against a real `ruby` when one is on PATH.
"""

from __future__ import annotations

import re
import warnings

# The inline flags both engines accept: i, m, x (m means "dot matches newline" in Ruby), and
# Onigmo's character-set options a, u (and d, which Python lacks and refuses below).
_RUBY_FLAGS = set("imxadu")
_GROUP_NAME = re.compile(r"[A-Za-z_]\w*")


def _python_only(pattern: str) -> str | None:
    """The first Python-only construct in PATTERN, described, or None."""
    in_class = False
    index = 0
    while index < len(pattern):
        char = pattern[index]
        rest = pattern[index:]
        if char == "\\":
            if rest.startswith("\\N{"):
                return "\\N{...} (Ruby reads \\N as 'not a newline'; write the character itself or \\u{...})"
            index += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
        elif char == "[":
            in_class = True
            if pattern[index + 1:index + 2] == "]":  # a ']' first in a class is a literal
                index += 1
        elif rest.startswith("(?P<"):
            return "(?P<name>...) (Ruby names a group with (?<name>...))"
        elif rest.startswith("(?P="):
            return "(?P=name) (Ruby refers back to a named group with \\k<name>)"
        elif rest.startswith("(?P>"):
            return "(?P>name) (Ruby calls a group with \\g<name>)"
        elif rest.startswith("(?("):
            name = re.match(r"\(\?\(([^)]*)\)", rest)
            if name and _GROUP_NAME.fullmatch(name.group(1)):
                return f"(?({name.group(1)})...) (Ruby's conditional names the group as (?(<{name.group(1)}>)...))"
        elif flags := re.match(r"\(\?([a-zA-Z]*)(?:-([a-zA-Z]*))?[:)]", rest):
            letters = flags.group(1) + (flags.group(2) or "")
            for letter in letters:
                if letter not in _RUBY_FLAGS:
                    hint = " (in Ruby (?m) makes . match a newline)" if letter == "s" else ""
                    return f"the inline flag ({'?' + letter}){hint}"
        index += 1
    return None


def _as_python(pattern: str) -> str:
    """PATTERN with Ruby's named groups and named backreferences spelled the Python way."""
    pattern = re.sub(r"(?<!\\)\(\?<(?![=!])", "(?P<", pattern)
    return re.sub(r"\\k<([A-Za-z_]\w*)>", r"(?P=\1)", pattern)


def ruby_regexp_problem(pattern: str) -> str | None:
    """Why Fluentd's Ruby would refuse PATTERN (or Levity cannot tell it would not), or None."""
    construct = _python_only(pattern)
    if construct:
        return f"Ruby regular-expression syntax, not Python's: {construct}"
    with warnings.catch_warnings():
        # Python warns where a class reads differently in engines with set operations ([[:alpha:]],
        # [a-z&&[^aeiou]]): Ruby is such an engine.
        warnings.simplefilter("error", FutureWarning)
        try:
            re.compile(_as_python(pattern))
        except (re.error, FutureWarning) as exc:
            return f"a regular expression in the syntax Ruby and Python share ({exc})"
    return None
