"""mkdocs hooks for the documentation site (`mkdocs.yml` loads this file; `make docs` serves it).

At build time this:

- expands `--8<-- "README.md:NAME"` in a page into the README's section NAME (between the
  `<!-- --8<-- [start:NAME] -->` and `<!-- --8<-- [end:NAME] -->` markers), so the site's home
  and guide pages are the README itself, never a hand-made copy;
- rewrites links that leave `docs/` (the README's `docs/x.md`, `examples/...`, `../examples/...`)
  into links inside the site, so `mkdocs build --strict` passes and every link works;
- generates `reference/cli.md`, the CLI reference, from the Typer app (every command and option,
  with its help), and `examples.md`, every file of `examples/` shown inline.

Nothing here is imported by the package; it needs only mkdocs and streammachine.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parent.parent
INCLUDE = re.compile(r'^--8<--\s+"README\.md:([a-z][-_0-9a-z]*)"\s*$', re.MULTILINE)
MARKER = re.compile(r"--8<--\s+\[(start|end):([a-z][-_0-9a-z]*)\]")
LINK = re.compile(r"(\]\()([^)\s]+)(\))")
FENCE = re.compile(r"^\s*(```|~~~)")
EXAMPLES_PAGE = "examples.md"
CLI_PAGE = "reference/cli.md"


# --- README sections and links -----------------------------------------------------------------


def readme_section(name: str) -> str:
    """The README's lines between the start and end markers named `name`."""
    lines: list[str] = []
    inside = found = False
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        marker = MARKER.search(line)
        if marker and marker.group(2) == name:
            inside = marker.group(1) == "start"
            found = found or inside
            continue
        if inside and not marker:
            lines.append(line)
    if not found:
        raise ValueError(f"README.md has no section {name!r} (add <!-- --8<-- [start:{name}] -->)")
    return "\n".join(lines)


def anchor(path: str) -> str:
    """The id of an example file's heading on the examples page."""
    return re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")


def rewrite_links(text: str, source_dir: str, page_uri: str) -> str:
    """Point links written relative to `source_dir` (in the repository) at pages of the site."""
    page_dir = posixpath.dirname(page_uri)

    def fix(match: re.Match[str]) -> str:
        target = match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target, re.IGNORECASE):
            return match.group(0)
        path, _, fragment = target.partition("#")
        repo_path = posixpath.normpath(posixpath.join(source_dir, path)) if path else ""
        if repo_path.startswith("docs/"):
            site_path = repo_path[len("docs/") :]
        elif repo_path == "examples" or repo_path.startswith("examples/"):
            site_path = EXAMPLES_PAGE
            inner = repo_path[len("examples/") :] if repo_path != "examples" else ""
            fragment = anchor(inner) if inner and inner != "deploy/README.md" else fragment
            if inner == "deploy/README.md":
                fragment = "deploy"
        else:
            return match.group(0)
        new = posixpath.relpath(site_path, page_dir or ".")
        return f"{match.group(1)}{new}{'#' + fragment if fragment else ''}{match.group(3)}"

    out: list[str] = []
    in_fence = False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
        out.append(line if in_fence else LINK.sub(fix, line))
    return "\n".join(out)


# --- the examples page -------------------------------------------------------------------------


LANGUAGES = {".py": "python", ".yaml": "yaml", ".json": "json", ".service": "ini", "": "dockerfile"}


def examples_page() -> str:
    """Every file under examples/ (tracked sources only), each under a heading of its own."""
    base = ROOT / "examples"
    parts = [
        "# Examples",
        "",
        "Every file of the repository's `examples/` directory. Run one with "
        "`REDIS_URL=memory:// streammachine run examples/basic.py:app` (no server needed).",
    ]
    files = sorted(
        p
        for p in base.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")
    )
    # Top-level files first, then each directory with its README.md leading.
    files.sort(
        key=lambda p: (
            p.relative_to(base).parent != Path("."),
            p.parent,
            p.name != "README.md",
            p.name,
        )
    )
    for path in files:
        rel = path.relative_to(base).as_posix()
        text = path.read_text(encoding="utf-8")
        if rel == "deploy/README.md":
            body = demote(rewrite_links(text, "examples/deploy", EXAMPLES_PAGE))
            parts += ["", "## `deploy/` {#deploy}", "", body]
            continue
        language = LANGUAGES.get(path.suffix, "text")
        parts += ["", f"## `{rel}` {{#{anchor(rel)}}}", "", f"```{language}", text.rstrip(), "```"]
    return "\n".join(parts) + "\n"


def demote(markdown: str) -> str:
    """Headings two levels down (outside code fences), to nest a file under a `##` heading."""
    out: list[str] = []
    in_fence = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
        out.append("##" + line if not in_fence and line.startswith("#") else line)
    return "\n".join(out)


# --- the CLI reference -------------------------------------------------------------------------


def escape(text: str) -> str:
    """`<`, `>` and `&` outside code spans as entities, so help text is never read as HTML."""
    pieces = text.split("`")
    for i in range(0, len(pieces), 2):
        pieces[i] = pieces[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(pieces)


def iter_commands(command: Any, path: list[str], parent: Any) -> Any:
    """(path, command, context) for `command` and every visible subcommand, depth first."""
    import click  # noqa: F401  (Typer's commands are click-compatible; the API below is click's)

    ctx = command.context_class(command, info_name=path[-1], parent=parent)
    yield path, command, ctx
    for name in sorted(getattr(command, "commands", {})):
        sub = command.commands[name]
        if not getattr(sub, "hidden", False):
            yield from iter_commands(sub, [*path, name], ctx)


def cli_page() -> str:
    """Markdown for every `streammachine` command: usage, help and options, from the Typer app."""
    import typer.main

    from streammachine.cli import app

    root = typer.main.get_command(app)
    parts = [
        "# CLI reference",
        "",
        "Generated from the command line itself at build time (`streammachine COMMAND --help` "
        "shows the same). The guide with examples is [The command line](../cli.md).",
    ]
    for path, command, ctx in iter_commands(root, ["streammachine"], None):
        name = " ".join(path)
        level = "#" * min(len(path) + 1, 4)
        parts += ["", f"{level} `{name}` {{#{anchor(name)}}}", ""]
        help_text = (command.help or command.short_help or "").split("\f")[0].strip()
        if help_text:
            parts += [escape(re.sub(r"^\s*\x08\s*$", "", help_text, flags=re.MULTILINE)), ""]
        pieces = " ".join(command.collect_usage_pieces(ctx))
        parts += ["```text", f"{ctx.command_path} {pieces}".rstrip(), "```"]
        options: list[str] = []
        for param in command.get_params(ctx):
            record = param.get_help_record(ctx)
            if param.param_type_name == "argument":
                meta = param.make_metavar(ctx) if record is None else record[0]
                helptext = record[1] if record else ""
                options.append(
                    f"- `{meta.split()[0]}`" + (f": {escape(helptext)}" if helptext else "")
                )
            elif record is not None:
                opts, helptext = record
                options.append(f"- `{opts}`" + (f": {escape(helptext)}" if helptext else ""))
        if options:
            parts += ["", *options]
        subcommands = [
            (sub_name, sub)
            for sub_name, sub in sorted(getattr(command, "commands", {}).items())
            if not getattr(sub, "hidden", False)
        ]
        if subcommands:
            parts += ["", "Commands:", ""]
            for sub_name, sub in subcommands:
                short = escape(sub.get_short_help_str(limit=100))
                parts.append(f"- [`{sub_name}`](#{anchor(name + ' ' + sub_name)}): {short}")
    return "\n".join(parts) + "\n"


# --- mkdocs events -----------------------------------------------------------------------------


def on_files(files: Files, config: MkDocsConfig) -> Files:
    files.append(File.generated(config, CLI_PAGE, content=cli_page()))
    files.append(File.generated(config, EXAMPLES_PAGE, content=examples_page()))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    uri = page.file.src_uri
    markdown = INCLUDE.sub(lambda m: rewrite_links(readme_section(m.group(1)), "", uri), markdown)
    if page.file.generated_by is None:
        markdown = rewrite_links(markdown, posixpath.join("docs", posixpath.dirname(uri)), uri)
    return markdown
