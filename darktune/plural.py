"""Counted nouns for messages printed to users: `plural(1, "class")` -> "1 class", `plural(3, "box")` -> "3 boxes"."""

from __future__ import annotations


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """"<n> <noun>" with the noun in the plural unless n is 1. `nouns` overrides the regular plural
    (+es after s, x, z, ch, sh; consonant + y -> ies; else +s)."""
    if n == 1:
        return f"{n} {noun}"
    if nouns is None:
        if noun.endswith(("s", "x", "z", "ch", "sh")):
            nouns = noun + "es"
        elif noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u", ""):
            nouns = noun[:-1] + "ies"
        else:
            nouns = noun + "s"
    return f"{n} {nouns}"
