"""Sections of results/REPORT.md that different commands own (figures, phase diagram, theory)."""

from __future__ import annotations

from pathlib import Path


def splice_section(report: Path, name: str, text: str) -> None:
    """Put `text` into `report` between `<!-- name -->` markers, replacing an earlier copy (or appending)."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    body = report.read_text() if report.exists() else ""
    block = f"{start}\n{text.strip()}\n{end}"
    if start in body and end in body:
        body = body[:body.index(start)] + block + body[body.index(end) + len(end):]
    else:
        body = body.rstrip("\n") + ("\n\n" if body else "") + block + "\n"
    report.write_text(body)
