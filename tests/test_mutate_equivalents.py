"""``make mutate`` leaves the mutants listed in ``scripts/mutate_equivalent.toml`` out of
its score: an entry must match the mutant's diff whatever its spacing, and must name a
line its module still has (else it is stale and silently matches nothing)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from scripts.mutate import EQUIVALENT, normal

ROOT = Path(__file__).parents[1]


def test_a_listed_line_matches_the_mutants_line_whatever_its_spacing_and_comment() -> None:
    assert normal("return str(values[ -1])") == normal("return str(values[-1])")
    assert normal("n = 4096  # a bound") == normal("n  =  4096")
    assert normal("if a < b:") != normal("if a <= b:")


def test_a_piece_of_a_statement_is_compared_by_its_words() -> None:
    assert normal("foo(a,  b,  # note") == normal("foo(a, b,")


def test_every_listed_equivalent_names_a_line_its_module_still_has() -> None:
    entries = tomllib.loads(EQUIVALENT.read_text())["equivalent"]
    for entry in entries:
        source = (ROOT / entry["module"]).read_text().splitlines()
        lines = {normal(line) for line in source if line.strip()}
        for original in entry["original"].split(" / "):
            assert normal(original) in lines, f"{entry['module']}: no line {original!r}"
        assert normal(entry["mutant"]) != normal(entry["original"]), entry
