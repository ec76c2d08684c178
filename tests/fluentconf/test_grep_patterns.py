"""Grep patterns are checked against the syntax Fluentd reads (Ruby's Regexp), not Python's re.

The written check (levity/fluentconf/ruby_regexp.py) is cross-checked against a real Ruby when
one is on PATH (or named by LEVITY_TEST_RUBY): every pattern it accepts, Ruby accepts too.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from levity.fluentconf.ruby_regexp import ruby_regexp_problem

# Python's re accepts all of these; Ruby's Regexp raises on each.
PYTHON_ONLY = ["(?P<name>x)", "(?P<id>cp-\\d+)(?P=id)", "(?s)a.b", "(?s:a.b)", "(?is)abc", "(?i-s:a)",
               "(?P<n>a)(?(n)a|b)", "(?L)\\w"]
# Both read these the same way (Ruby's named groups included).
SHARED = ["^ocpp\\.(boot|heartbeat)$", "Faulted|Unavailable", "(?i)accepted", "(?<name>x)\\k<name>",
          "(?<=ab)x", "(?<!a)x", "a*+", "(?>a+)", "a{,3}", "(?x) a b", "(?m)a.b", "[#]", "(a)(?(1)a|b)",
          "\\d+\\.\\d+", "[]a]", "(?-i:abc)", "(?u)\\w", "\\u00e9"]
# Ruby reads these, Python cannot: refused (Levity cannot vouch for them), never silently passed.
RUBY_ONLY = ["\\h+", "\\p{L}", "[[:alpha:]]", "\\z"]


@pytest.mark.parametrize("pattern", PYTHON_ONLY)
def test_python_only_syntax_is_refused_with_the_ruby_spelling(pattern):
    problem = ruby_regexp_problem(pattern)
    assert problem is not None and problem.startswith("Ruby regular-expression syntax"), problem


@pytest.mark.parametrize("pattern", SHARED)
def test_shared_syntax_passes(pattern):
    assert ruby_regexp_problem(pattern) is None


@pytest.mark.parametrize("pattern", RUBY_ONLY + ["(unclosed", "a)"])
def test_what_levity_cannot_vouch_for_is_refused(pattern):
    assert "regular expression" in ruby_regexp_problem(pattern)


def test_profile_error_names_file_key_path_and_the_ruby_spelling(base, profile_error):
    base["filters"].append({"name": "g", "type": "grep",
                            "regexp": [{"key": "charge_point_id", "pattern": "(?P<site>cp-\\d+)"}]})
    error = profile_error(base)
    problem = next(p for p in error.problems if p.key_path == "filters[1].regexp[0].pattern")
    assert problem.file.endswith("profile.yaml")
    assert "(?P<name>...)" in problem.expected and "(?<name>...)" in problem.expected


def _ruby() -> str:
    ruby = os.environ.get("LEVITY_TEST_RUBY") or shutil.which("ruby")
    if not ruby:
        pytest.skip("no ruby on PATH (or LEVITY_TEST_RUBY): the cross-check against Ruby's Regexp needs one")
    return ruby


def test_every_pattern_the_check_accepts_ruby_accepts():
    """The direction that matters: no pattern passes validate that Fluentd's Ruby would refuse."""
    script = ("STDIN.each_line { |l| p = l.chomp; begin; Regexp.new(p); puts 'ok'; "
              "rescue RegexpError => e; puts 'error ' + e.message; end }")
    patterns = PYTHON_ONLY + SHARED + RUBY_ONLY
    result = subprocess.run([_ruby(), "-W0", "-e", script], input="\n".join(patterns) + "\n",
                            capture_output=True, text=True, timeout=60, check=True)
    verdicts = dict(zip(patterns, result.stdout.splitlines()))
    for pattern in PYTHON_ONLY:
        assert verdicts[pattern].startswith("error"), f"Ruby accepts {pattern!r}: the check refuses it wrongly"
    for pattern in SHARED + RUBY_ONLY:
        assert verdicts[pattern] == "ok", f"Ruby refuses {pattern!r}: {verdicts[pattern]}"
