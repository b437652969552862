"""MkDocs hook: the repository's CHANGELOG.md as the site's changelog page (one file, no copy to drift).

Its links are written for the repository root (`docs/performance.md`); on the site they point at the pages.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
PAGE = "changelog.md"


def on_files(files, config):
    files.append(File.generated(config, PAGE, abs_src_path=str(ROOT / "CHANGELOG.md")))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != PAGE:
        return markdown
    return re.sub(r"\]\(docs/", "](", markdown)
