"""Glob matching with `*` and `?` only, for trust rules and sysctl patterns.

fnmatch would import `re` on the container-start path; policies need no
character classes, and policy compilation rejects them.
"""

from __future__ import annotations

def match(pattern: str, name: str) -> bool:
    """True if name matches pattern; `*` spans any run of characters (slashes too), `?` one."""
    p = n = 0
    star, mark = -1, 0
    while n < len(name):
        if p < len(pattern) and pattern[p] in ("?", name[n]) and pattern[p] != "*":
            p, n = p + 1, n + 1
        elif p < len(pattern) and pattern[p] == "*":
            star, mark, p = p, n, p + 1
        elif star != -1:
            p, mark = star + 1, mark + 1
            n = mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)
