"""MkDocs hook: the commands page's generated parts, and a check of every command the pages name.

docs/commands.md holds markers that this hook replaces:

* `<!-- generated: make-targets -->`: every Makefile target with a `## ` comment, the comment and its recipe;
* `<!-- generated: make-variables -->`: the Makefile's variables (`NAME ?= default`) and their defaults;
* `<!-- generated: command-help -->`: each command's `--help`, captured now by running
  `python -m src.<command> --help` from the repository root.

The commands are found, not listed: every `src/<name>.py` with a `__main__` block and every `src/<name>/__main__.py`.
The build fails when a command's `--help` fails or times out, when the page's own table of commands misses one,
and when any page names `python -m src.<x>` for an `<x>` that is not a command.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[2]
PAGE = "commands.md"
HELP_TIMEOUT_S = 120
TABLE = re.compile(r"<!-- commands-table -->(.*?)<!-- /commands-table -->", re.S)
NAMED = re.compile(r"python -m src\.(\w+)")


def commands() -> list[str]:
    """The project's commands, as `python -m src.<name>` runs them."""
    found = [p.stem for p in (ROOT / "src").glob("*.py")
             if p.stem != "__init__" and re.search(r"__name__\s*==\s*['\"]__main__['\"]", p.read_text())]
    found += [p.parent.name for p in (ROOT / "src").glob("*/__main__.py")]
    if not found:
        raise PluginError("no commands found under src/")
    first = ["train", "reproduce", "compare", "evaluate"]  # the everyday ones first, then the rest by name
    return sorted(set(found), key=lambda c: (first.index(c) if c in first else len(first), c))


def _help(command: str) -> str:
    env = dict(os.environ, COLUMNS="100")
    try:
        done = subprocess.run([sys.executable, "-m", f"src.{command}", "--help"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=HELP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise PluginError(f"python -m src.{command} --help did not finish in {HELP_TIMEOUT_S} s")
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise PluginError(f"python -m src.{command} --help exited {done.returncode}:\n{tail}")
    return done.stdout.rstrip()


def helps(names: list[str]) -> dict[str, str]:
    """Each command's --help, run side by side."""
    with ThreadPoolExecutor(max_workers=min(8, len(names))) as pool:
        return dict(zip(names, pool.map(_help, names)))


# --- the Makefile --------------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    import html

    return html.escape(text, quote=False).replace("|", "\\|")


def _code(text: str) -> str:
    if "|" in text or "`" in text:
        import html

        return "<code>" + html.escape(text).replace("|", "&#124;") + "</code>"
    return f"`{text}`"


def make_targets() -> tuple[str, str]:
    lines = (ROOT / "Makefile").read_text().splitlines()
    targets, variables = [], []
    for i, line in enumerate(lines):
        var = re.match(r"^([A-Z_]+)\s*\?=\s*(.*)$", line)
        if var:
            variables.append((var.group(1), var.group(2).strip()))
            continue
        target = re.match(r"^([\w.-]+(?:\s+[\w.-]+)*)\s*:(?!=)[^#]*##\s*(.*)$", line)
        if not target:
            continue
        recipe, j = [""], i + 1
        while j < len(lines) and lines[j].startswith("\t"):
            part = lines[j].strip()
            recipe[-1] += " " + part.rstrip("\\")
            if not part.endswith("\\"):  # a line of its own, unless it continues with a backslash
                recipe.append("")
            j += 1
        recipe = "; ".join(" ".join(r.split()) for r in recipe if r.strip())
        targets.append((target.group(1), target.group(2).strip(), recipe))
    if not targets:
        raise PluginError("Makefile: no target with a `## ` comment")
    rows = ["| target | what it does | runs |", "|---|---|---|"]
    for name, what, recipe in targets:
        rows.append(f"| `make {name}` | {_cell(what)} | {_code(recipe)} |")
    var_rows = ["| variable | default |", "|---|---|"]
    var_rows += [f"| `{name}` | {_code(value) if value else '(empty)'} |" for name, value in variables]
    return "\n".join(rows), "\n".join(var_rows)


# --- the hooks -----------------------------------------------------------------------------------------------


def on_page_markdown(markdown, page, config, files):
    known = commands()
    unknown = sorted(set(NAMED.findall(markdown)) - set(known))
    if unknown:
        raise PluginError(f"{page.file.src_uri} names commands that do not exist: "
                          + ", ".join(f"python -m src.{c}" for c in unknown))
    if page.file.src_uri != PAGE:
        return markdown
    table = TABLE.search(markdown)
    if not table:
        raise PluginError(f"{PAGE}: the <!-- commands-table --> ... <!-- /commands-table --> table is missing")
    untabled = [c for c in known if f"python -m src.{c}" not in table.group(1)]
    if untabled:
        raise PluginError(f"{PAGE}: the commands table misses " + ", ".join(f"python -m src.{c}" for c in untabled))
    targets, variables = make_targets()
    sections = []
    for name, text in helps(known).items():
        sections.append(f"### `python -m src.{name}`\n\n```text\n$ python -m src.{name} --help\n{text}\n```\n")
    for marker, text in (("<!-- generated: make-targets -->", targets),
                         ("<!-- generated: make-variables -->", variables),
                         ("<!-- generated: command-help -->", "\n".join(sections))):
        if marker not in markdown:
            raise PluginError(f"{PAGE}: the marker {marker} is missing")
        markdown = markdown.replace(marker, text)
    return markdown
