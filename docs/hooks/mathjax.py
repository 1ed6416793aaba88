"""MkDocs hook: serve MathJax 3 from the site itself, so formulas render offline.

MathJax comes from the PyPI package `django-static-mathjax` (a verbatim copy of MathJax 3.2.2's
`es5/` build; it needs no Django), installed by the `docs` extra. At build (and `mkdocs serve`)
time this hook adds the combined `tex-chtml.js` component, its fonts and the TeX extensions it
loads on demand to the site under `assets/mathjax/`; `mkdocs.yml` loads it from there.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

DEST = "assets/mathjax"
# the combined TeX-to-HTML component and what it fetches at run time (fonts, TeX extensions,
# the context menu and its accessibility options); the speech engine (sre/, 4 MB) is left out
PARTS = ("tex-chtml.js", "input/tex/extensions", "output/chtml", "ui", "a11y")


def mathjax_root() -> Path:
    spec = importlib.util.find_spec("mathjax")
    root = Path(spec.origin).parent / "static" / "mathjax" / "es5" if spec and spec.origin else None
    if root is None or not (root / "tex-chtml.js").is_file():
        raise PluginError(
            "MathJax not found: pip install -c constraints.txt -e '.[docs]' "
            "(the docs extra installs django-static-mathjax, which ships MathJax 3)"
        )
    return root


def on_files(files, config):
    root = mathjax_root()
    for part in PARTS:
        source = root / part
        for path in [source] if source.is_file() else sorted(source.rglob("*")):
            if path.is_file():
                dest = f"{DEST}/{path.relative_to(root).as_posix()}"
                files.append(File.generated(config, dest, abs_src_path=str(path)))
    return files
