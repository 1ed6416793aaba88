"""MkDocs hook: the API index page, built from the `::: name` entries of every page.

Each public name is documented once, on the page about its topic, by a `::: name` line. This
hook collects those lines, writes the table of `api.md` (at its `<!-- API INDEX -->` marker):
every name, its one-line summary and a link to its entry, and reports in the build log any
name documented twice and any entry that is a whole module (which would list its internals).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.api_index")
ENTRY = re.compile(r"^::: ([\w.]+)\s*$", re.MULTILINE)
MARKER = "<!-- API INDEX -->"
ROLE_MATH = re.compile(r":math:`([^`]*)`")
_entries: dict[str, str] = {}


def on_pre_build(config):
    _entries.clear()
    docs = Path(config.docs_dir)
    for page in sorted(docs.rglob("*.md")):
        relative = page.relative_to(docs).as_posix()
        if relative.startswith(("generated/", "hooks/")):
            continue
        for name in ENTRY.findall(page.read_text()):
            if name in _entries:
                log.info(f"api index: {name} is documented on {_entries[name]} and {relative}")
            _entries.setdefault(name, relative)


def summary(name: str) -> tuple[str, str]:
    """(kind, first docstring line) of a documented object, by importing it."""
    module, _, attribute = name.rpartition(".")
    try:
        obj = importlib.import_module(name)
        log.info(f"api index: {name} is a whole module; document its public names one by one")
    except ImportError:
        try:
            obj = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError):
            return "", ""
    kind = "class" if inspect.isclass(obj) else "function" if callable(obj) else "module"
    doc = (inspect.getdoc(obj) or "").split("\n\n")[0].replace("\n", " ")
    doc = ROLE_MATH.sub(r"$\1$", doc)  # a reST role in a summary becomes $...$ math
    return kind, doc.replace("|", "\\|")


def on_page_markdown(markdown, page, config, files):
    if MARKER not in markdown:
        return markdown
    sections: dict[str, list[str]] = {}
    for name, where in _entries.items():
        kind, doc = summary(name)
        short = name.rpartition(".")[2]
        link = f"[`{short}`]({Path(where).name}#{name})" if "/" not in where else f"`{short}`"
        sections.setdefault(name.rsplit(".", 1)[0], []).append(f"| {link} | {kind} | {doc} |")
    table = []
    for module in sorted(sections):
        table += [f"\n## `{module}`\n", "| name | kind | summary |", "| --- | --- | --- |"]
        table += sections[module]
    return markdown.replace(MARKER, "\n".join(table))
