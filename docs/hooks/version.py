"""MkDocs hook: the package version in the site header and wherever a page has `{{ version }}`."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def package_version() -> str:
    text = (ROOT / "varinf" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE).group(1)


def on_config(config):
    config.site_name = f"{config.site_name} {package_version()}"
    return config


def on_page_markdown(markdown, page, config, files):
    return markdown.replace("{{ version }}", package_version())
