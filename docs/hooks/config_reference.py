"""MkDocs hook: the configuration page's tables, generated at build time so they cannot drift from the code.

docs/configuration.md holds markers that this hook replaces:

* `<!-- generated: config-groups -->`: every config group, its options (the YAML files in conf/<group>/), the
  default option and what each option file sets;
* `<!-- generated: config-keys -->`: every key of the composed config (`compose_config()`), with its type (from
  the dataclass schemas), its default (per option where the options differ) and its description: the key's
  `# comment` in the conf/ file that sets it (a comment block just above the key, its trailing comment and the
  comment lines continuing it), else the schema field's comment, then the page's own note on the key, and whether
  the key is part of the config digest (`NON_SEMANTIC_KEYS`);
* `<!-- generated: hydra-keys -->`: the keys that conf/config.yaml and the hydra/sweeper and hydra/launcher option
  files set, with their values and comments.

The notes are the page's list between `<!-- key-notes -->` and `<!-- /key-notes -->`: one item per key,
"* `key`: text". Each is added to its key's row (a section's note, e.g. `trial`, to that section's heading) and
the list is dropped from the page. A note on a key that no longer exists, or a missing marker, fails the build.
"""

from __future__ import annotations

import dataclasses
import enum
import html
import inspect
import re
import sys
import typing
from pathlib import Path

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
PAGE = "configuration.md"
HYDRA_GROUPS = {"hydra/sweeper": "hydra.sweeper", "hydra/launcher": "hydra.launcher"}
NOTES = re.compile(r"<!-- key-notes -->(.*?)<!-- /key-notes -->", re.S)
NOTE_ITEM = re.compile(r"^\* `([\w./]+)`: (.*?)(?=^\* `|\Z)", re.S | re.M)
REPO = "<repo>"  # how `${project_root:}` is shown
GENERIC = {  # what a key means wherever it appears, for a key without a comment of its own
    "name": "the option's name: `{group}=<name>` picks `conf/{group}/<name>.yaml`",
    "_target_": "what Hydra instantiates: a class or function, given the section's other keys",
    "_partial_": "Hydra instantiates it as a partial, which the code completes",
}


def _import_project():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from src.core import schema
    from src.core.config import NON_SEMANTIC_KEYS, compose_config, group_options

    return schema, compose_config, group_options, NON_SEMANTIC_KEYS


# --- conf/*.yaml: each key's comment --------------------------------------------------------------------------


def _split_comment(text: str) -> tuple[str, str | None]:
    """A YAML line's content and its trailing comment (a `#` outside quotes, after a space)."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip(), text[i + 1:].strip()
    return text.rstrip(), None


KEY_LINE = re.compile(r"^(\s*)([A-Za-z_][\w.\-]*)\s*:(?:\s|$)(.*)$")


def yaml_comments(path: Path, prefix: str = "") -> tuple[str, dict[str, str]]:
    """The file's header comment and {dotted key: its comment} for every key the file sets."""
    lines = path.read_text().splitlines()
    header, i = [], 0
    while i < len(lines) and lines[i].lstrip().startswith("#"):
        header.append(lines[i].lstrip()[1:].strip())
        i += 1
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] = []  # a comment block waiting for the key below it
    last = None  # (dotted key, its indent) of the last key with a trailing comment, for continuation lines
    for line in lines[i:]:
        stripped = line.strip()
        if not stripped:
            pending, last = [], None
            continue
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("#"):
            text = stripped[1:].strip()
            if last and indent > last[1]:
                comments[last[0]] += " " + text
            else:
                pending.append(text)
                last = None
            continue
        match = KEY_LINE.match(line)
        if not match:  # a list item (the defaults list) or a continued value
            pending, last = [], None
            continue
        key = match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        dotted = prefix + ".".join(k for _, k in stack)
        _, trailing = _split_comment(match.group(3))
        text = " ".join([*pending, *([trailing] if trailing else [])])
        pending = []
        if text:
            comments[dotted] = text
        last = (dotted, indent) if trailing else None
    return " ".join(header), comments


# --- the schemas: each key's type and field comment -------------------------------------------------------------


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _with_subclasses(cls) -> list:
    found = [cls]
    for sub in cls.__subclasses__():
        found += [c for c in _with_subclasses(sub) if c not in found]
    return found


def _field_comments(cls) -> dict[str, str]:
    """{field: its trailing comment} in the class and its bases (a subclass's own comment wins)."""
    found = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):  # a class made by make_dataclass has no source
            continue
        for line in source.splitlines():
            match = re.match(r"^\s+(\w+)\s*:[^#]*#\s*(.*)$", line)
            if match:
                found[match.group(1)] = match.group(2).strip()
    return found


def _class_doc(cls) -> str:
    doc = cls.__doc__ or ""
    if doc.startswith(cls.__name__ + "("):  # the signature dataclasses write when there is no docstring
        return ""
    return " ".join(inspect.cleandoc(doc).split())


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return " or ".join(_type_name(a) for a in rest) + " or null"
    if origin in (list, typing.List):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin in (dict, typing.Dict):
        return "mapping"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(f"`{m.value}`" for m in tp)
    return getattr(tp, "__name__", str(tp))


def schema_fields(cls, prefix: str = "") -> dict[str, dict]:
    """{dotted key: {type, comment}} over a schema and, for a section typed by a base schema, its subclasses."""
    found: dict[str, dict] = {}
    for klass in _with_subclasses(cls):
        hints = typing.get_type_hints(klass)
        comments = _field_comments(klass)
        for f in dataclasses.fields(klass):
            tp = hints.get(f.name, f.type)
            key = prefix + f.name
            if _is_dataclass_type(tp):
                found.setdefault(key, {"type": "section", "comment": comments.get(f.name, ""),
                                       "doc": _class_doc(tp)})
                for sub_key, sub in schema_fields(tp, key + ".").items():
                    found.setdefault(sub_key, sub)
            else:
                found.setdefault(key, {"type": _type_name(tp), "comment": comments.get(f.name, "")})
    return found


def node_fields(node, prefix: str = "") -> dict[str, dict]:
    """{dotted key: {type, comment}} from the schemas a composed config's nodes are typed by (an option's own)."""
    from omegaconf import DictConfig, OmegaConf

    found: dict[str, dict] = {}
    kind = OmegaConf.get_type(node)
    if _is_dataclass_type(kind):
        found.update(schema_fields(kind, prefix))
        if prefix:
            found[prefix[:-1]] = {"type": "section", "comment": "", "doc": _class_doc(kind)}
    for key in node:
        child = node._get_node(key) if hasattr(node, "_get_node") else None
        if isinstance(child, DictConfig):
            for sub_key, sub in node_fields(child, f"{prefix}{key}.").items():
                found.setdefault(sub_key, sub)
    return found


# --- values --------------------------------------------------------------------------------------------------


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return str(value).replace("${project_root:}", REPO)


def _code(text: str) -> str:
    """A code span that survives a table cell."""
    if "|" in text or "`" in text:
        return "<code>" + html.escape(text).replace("|", "&#124;") + "</code>"
    return f"`{text}`"


def _cell(text: str) -> str:
    """Prose for a table cell: one line, pipes escaped (inside code spans too)."""
    parts = " ".join(text.split()).split("`")
    for i, part in enumerate(parts):
        if i % 2 == 0:
            parts[i] = html.escape(part, quote=False).replace("|", "\\|")
        elif "|" in part:
            parts[i] = "<code>" + html.escape(part).replace("|", "&#124;") + "</code>"
        else:
            parts[i] = f"`{part}`"
    return "".join(parts)


def _sentence(text: str) -> str:
    """A comment as a sentence: capitalized, with a full stop."""
    text = text.strip()
    if not text:
        return text
    return text[0].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


def _join(text: str, note: str) -> str:
    """A key's comment followed by the page's note on it."""
    text = text.rstrip()
    if not text:
        return note
    if not note:
        return text
    if text.endswith((".", ";", ":")):
        return f"{text} {note}"
    return f"{text}{'. ' if note[:1].isupper() else '; '}{note}"


def _leaves(tree, prefix: str = "") -> dict[str, object]:
    found = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            found.update(_leaves(value, dotted + "."))
        else:
            found[dotted] = value
    return found


# --- the tables ----------------------------------------------------------------------------------------------


def _defaults() -> dict[str, str]:
    """{group: its default option}, from conf/config.yaml's defaults list."""
    from omegaconf import OmegaConf

    chosen = {}
    for entry in OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml"))["defaults"]:
        if isinstance(entry, dict):
            chosen.update(entry)
    return chosen


def _resolved(cfg, key: str, raw):
    """A default that interpolates other keys, resolved (None where it reads the environment, the clock or paths)."""
    from omegaconf import OmegaConf

    if not isinstance(raw, str) or "${" not in raw or any(t in raw for t in ("oc.env", "now:", "project_root")):
        return None
    try:
        return OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(cfg, key)}), resolve=True,
                                      enum_to_str=True)["v"]
    except Exception:  # an interpolation that only resolves in a job (e.g. hydra:...)
        return None


def _parse_notes(markdown: str) -> tuple[str, dict[str, str]]:
    match = NOTES.search(markdown)
    if not match:
        raise PluginError(f"{PAGE}: the <!-- key-notes --> ... <!-- /key-notes --> list is missing")
    notes = {key: " ".join(text.split()) for key, text in NOTE_ITEM.findall(match.group(1))}
    return markdown[:match.start()] + markdown[match.end():], notes


def build(markdown: str) -> str:
    from omegaconf import OmegaConf

    schema, compose_config, group_options, non_semantic = _import_project()
    markdown, notes = _parse_notes(markdown)
    chosen = _defaults()
    # the groups whose options set keys of the run's config: those of the defaults list, Hydra's aside
    project_groups = [g for g in chosen if not g.startswith("hydra")]

    # every key, with its value under each option of the project's groups
    composed = compose_config([])
    base = OmegaConf.to_container(composed, resolve=False, enum_to_str=True)
    keys = dict.fromkeys(_leaves(base))  # ordered as composed
    values: dict[str, dict[str, object]] = {}  # key -> {option: value}
    only_with: dict[str, set[str]] = {}  # key -> the options that have it
    option_fields: dict[str, dict] = {}  # key -> its type and comment in the schema of the option that has it
    for group in project_groups:
        for option in group_options(group):
            option_cfg = compose_config([f"{group}={option}"])
            option_fields.update({k: v for k, v in node_fields(option_cfg[group], group + ".").items()
                                  if k not in option_fields})
            tree = OmegaConf.to_container(option_cfg, resolve=False, enum_to_str=True)
            for key, value in _leaves(tree[group], group + ".").items():
                values.setdefault(key, {})[option] = value
                only_with.setdefault(key, set()).add(option)
                if key not in keys:  # a key of one option only (loop=tape's): after its section's keys
                    order = list(keys)
                    last = max(i for i, k in enumerate(order) if k.startswith(group + "."))
                    keys = dict.fromkeys([*order[:last + 1], key, *order[last + 1:]])

    # descriptions: conf/config.yaml, then each group's option files (the default option first)
    config_header, comments = yaml_comments(CONF / "config.yaml")
    option_info: dict[str, dict[str, tuple[str, dict]]] = {}
    for group in project_groups:
        options = group_options(group)
        ordered = sorted(options, key=lambda o: o != chosen.get(group))
        for option in ordered:
            header, found = yaml_comments(CONF / group / f"{option}.yaml", group + ".")
            option_info.setdefault(group, {})[option] = (header, found)
            for key, text in found.items():
                comments.setdefault(key, text)
    fields = schema_fields(schema.Config)
    for key, field in {**node_fields(composed), **option_fields}.items():  # an option's own schema knows more
        if key not in fields or not fields[key].get("type") or (field.get("comment") and not
                                                                  fields[key].get("comment")):
            fields[key] = field

    unknown = sorted(k for k in notes if k not in keys and k not in fields and not k.startswith("hydra."))
    if unknown:
        raise PluginError(f"{PAGE}: notes on keys the config does not have: {', '.join(unknown)}")

    # the groups table
    rows = ["| group | option | what it is | sets |", "|---|---|---|---|"]
    for group in project_groups:
        for option in group_options(group):
            header, _ = option_info[group][option]
            tree = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml"), resolve=False)
            tree.pop("defaults", None)
            sets = ", ".join(_code(f"{group}.{k}={_show(v)}") for k, v in _leaves(tree).items())
            name = f"**`{option}`** (default)" if chosen.get(group) == option else f"`{option}`"
            rows.append(f"| `{group}` | {name} | {_cell(header)} (`conf/{group}/{option}.yaml`) | {sets} |")
    for group, prefix in HYDRA_GROUPS.items():
        default = chosen.get(group, "basic")
        rows.append(f"| `{group}` | **`{default}`** (default) | Hydra's own | |")
        for option in group_options(group):
            header, _ = yaml_comments(CONF / group / f"{option}.yaml")
            rows.append(f"| `{group}` | `{option}` | {_cell(header)} (`conf/{group}/{option}.yaml`) | "
                        f"the `{prefix}.*` keys below |")
    groups_table = "\n".join(rows)

    # the keys tables, one per section
    def default_cell(key: str) -> str:
        group = key.split(".")[0]
        per_option = values.get(key)
        if not per_option:
            raw = _leaves(base)[key]
            cell = _code(_show(raw))
            value = _resolved(composed, key, raw)
            return cell + (f" (= {_code(_show(value))})" if value is not None else "")
        default_option = chosen.get(group)
        if key.endswith(".name") and all(v == o for o, v in per_option.items()):
            return f"the option's name ({_code(_show(per_option[default_option]))})"
        if default_option not in per_option:
            return "; ".join(f"{o}: {_code(_show(v))}" for o, v in sorted(per_option.items()))
        default = per_option[default_option]
        others = {}
        for o, v in sorted(per_option.items()):
            if o != default_option and v != default:
                others.setdefault(_show(v), []).append(o)
        cell = _code(_show(default))
        if others:
            cell += "; " + "; ".join(f"{', '.join(os_)}: {_code(v)}" for v, os_ in others.items())
        return cell

    sections: dict[str, list[str]] = {}
    for key in keys:
        section = key.split(".")[0] if "." in key else ""
        field = fields.get(key, {})
        kind = field.get("type", "")
        group = key.split(".")[0]
        if group in project_groups and key in only_with and len(only_with[key]) < len(group_options(group)):
            kind += f" (`{group}={', '.join(sorted(only_with[key]))}` only)"
        in_every_option = key in only_with and len(only_with[key]) == len(group_options(group))
        if in_every_option and field.get("comment"):  # a key of the group's base schema: its comment is general
            description = field["comment"]
        else:
            description = comments.get(key) or field.get("comment", "")
        if not description:
            description = GENERIC.get(key.rsplit(".", 1)[-1], "").format(group=group)
        description = _join(description, notes.get(key, ""))
        if section not in non_semantic and any(key == k or key.startswith(k + ".") for k in non_semantic):
            description = _join(description, "Not part of the config digest.")
        sections.setdefault(section, []).append(
            f"| `{key}` | {_cell(kind)} | {default_cell(key)} | {_cell(description)} |")

    out = []
    for section, section_rows in sorted(sections.items(), key=lambda item: item[0] == ""):  # top-level keys last
        title = f"`{section}`" if section else "Top-level keys"
        out.append(f"### {title}\n")
        intro = ""
        if section:  # the section's comment in conf/config.yaml, else its schema's docstring; then the note
            intro = _join(_sentence(comments.get(section) or fields.get(section, {}).get("doc", "")),
                          notes.get(section, ""))
            if section in non_semantic:
                intro = _join(intro, "None of these keys is part of the config digest.")
        if intro:
            out.append(intro + "\n")
        out.append("| key | type | default | description |\n|---|---|---|---|")
        out.append("\n".join(section_rows) + "\n")
    keys_table = "\n".join(out)

    # Hydra's keys: what conf/config.yaml and the hydra/* option files set
    out = []
    _, config_comments = yaml_comments(CONF / "config.yaml")
    hydra_tree = OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml"), resolve=False)["hydra"]
    sources = [("`conf/config.yaml`, for every command", "hydra.", _leaves(hydra_tree, "hydra."), config_comments)]
    for group, prefix in HYDRA_GROUPS.items():
        for option in group_options(group):
            path = CONF / group / f"{option}.yaml"
            tree = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
            tree.pop("defaults", None)
            leaves = {k: v for k, v in _leaves(tree, prefix + ".").items()
                      if k not in (f"{prefix}._target_", f"{prefix}._recursive_")}
            _, found = yaml_comments(path, prefix + ".")
            sources.append((f"`{group}={option}` (`conf/{group}/{option}.yaml`)", prefix, leaves, found))
    hydra_keys = {k for _, _, leaves, _ in sources for k in leaves}
    unknown = sorted(k for k in notes if k.startswith("hydra.") and k not in hydra_keys)
    if unknown:
        raise PluginError(f"{PAGE}: notes on Hydra keys that conf/ does not set: {', '.join(unknown)}")
    for title, _, leaves, found in sources:
        out.append(f"### {title}\n")
        out.append("| key | default | description |\n|---|---|---|")
        for key, value in leaves.items():
            text, parent = found.get(key), key
            while not text and "." in parent:  # a leaf without a comment: its section's
                parent = parent.rsplit(".", 1)[0]
                text = found.get(parent)
            text = _join(text or "", notes.get(key, ""))
            out.append(f"| `{key}` | {_code(_show(value))} | {_cell(text)} |")
        out.append("")
    hydra_table = "\n".join(out)

    for marker, text in (("<!-- generated: config-groups -->", groups_table),
                         ("<!-- generated: config-keys -->", keys_table),
                         ("<!-- generated: hydra-keys -->", hydra_table)):
        if marker not in markdown:
            raise PluginError(f"{PAGE}: the marker {marker} is missing")
        markdown = markdown.replace(marker, text)
    return markdown


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != PAGE:
        return markdown
    try:
        return build(markdown)
    except PluginError:
        raise
    except Exception as error:  # an import or composition error: the build must fail, naming it
        raise PluginError(f"{PAGE}: cannot generate the config reference: {type(error).__name__}: {error}") from error
