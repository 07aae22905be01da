"""The install line for one of the project's optional extras, read from the installed package's
metadata, so that pyproject.toml stays the one place the pins live and the line works for a
checkout and for a plain install (pip install ., a wheel) alike."""
from __future__ import annotations

import re

DIST = "mdtrack"
_EXTRA = re.compile(r'^(?P<req>[^;]+?)\s*;\s*extra\s*==\s*["\'](?P<extra>[\w.-]+)["\']\s*$')
_SELF = re.compile(rf"^{DIST}\[(?P<extras>[\w.,\s-]+)\]$")


# Base pins repeated in every hint: installed alone, the extras' packages pull in a numpy that
# MXNet cannot import. (Not the others: repeating opencv-python-headless would put a second cv2
# beside a GUI build a user installed for --show.)
KEEP_PINNED = ("numpy",)


def extra_requirements(extra: str) -> list[str] | None:
    """The pins of ``extra`` (its references to other extras expanded) after the base pins of
    KEEP_PINNED; an empty list for an unknown extra, None where the package metadata cannot be
    read (a bare source tree on PYTHONPATH)."""
    import importlib.metadata as md

    try:
        reqs = md.requires(DIST) or []
    except md.PackageNotFoundError:
        return None
    own = _of_extra(reqs, extra, set())
    base = [r.strip() for r in reqs if ";" not in r and re.split(r"[=<>!~\[ ]", r.strip(), 1)[0] in KEEP_PINNED]
    return base + [r for r in own if r not in base] if own else []


def _of_extra(reqs: list[str], extra: str, seen: set) -> list[str]:
    seen.add(extra)
    out = []
    for line in reqs:
        m = _EXTRA.match(line)
        if not m or m.group("extra") != extra:
            continue
        req = m.group("req").strip()
        found = [req]
        own = _SELF.match(req)
        if own:  # mdtrack[export] inside the tune extra
            found = []
            for sub in (e.strip() for e in own.group("extras").split(",")):
                if sub and sub not in seen:
                    found += _of_extra(reqs, sub, seen)
        out += [r for r in found if r not in out]
    return out


def install_hint(extra: str) -> str:
    """``pip install <pins>`` for ``extra``, naming the extra and the checkout's own command."""
    checkout = f"in a checkout: pip install -e '.[{extra}]'"
    reqs = extra_requirements(extra)
    if not reqs:
        return checkout
    return f"pip install {' '.join(reqs)} (the {extra!r} extra; {checkout})"
