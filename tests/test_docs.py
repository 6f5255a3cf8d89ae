"""The documentation site (mkdocs.yml) builds with `mkdocs build --strict`: no broken link, no
missing reference; its CLI reference lists every command; its API pages come from the docstrings;
its home page is the README's intro.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
pytest.importorskip("mkdocstrings", reason="the docs extra is not installed")

ROOT = Path(__file__).resolve().parent.parent


def command_paths() -> Iterator[list[str]]:
    """Every visible command of the `streammachine` CLI, as its words (`["dead", "replay"]`)."""
    import typer.main

    from streammachine.cli import app

    def walk(command: object, path: list[str]) -> Iterator[list[str]]:
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            if not getattr(sub, "hidden", False):
                yield [*path, name]
                yield from walk(sub, [*path, name])

    yield from walk(typer.main.get_command(app), [])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-4000:]}"
    assert "WARNING" not in result.stderr, result.stderr[-4000:]
    return out


def test_cli_reference_lists_every_command(site: Path) -> None:
    page = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    paths = list(command_paths())
    assert len(paths) > 20, paths  # the walk found the real command tree
    missing = [
        " ".join(path)
        for path in paths
        if f'id="streammachine-{"-".join(path)}"' not in page
        or f"streammachine {' '.join(path)}" not in page
    ]
    assert missing == [], f"commands missing from the CLI reference: {missing}"
    assert "--redis-url" in page and "REDIS_URL" in page  # options and their help are rendered


def test_api_reference_comes_from_the_docstrings(site: Path) -> None:
    app_page = (site / "reference" / "app" / "index.html").read_text(encoding="utf-8")
    for ident in (
        "streammachine.app.App",
        "streammachine.app.App.send",
        "streammachine.message.Message",
    ):
        assert f'id="{ident}"' in app_page, ident
    frames = (site / "reference" / "frames" / "index.html").read_text(encoding="utf-8")
    assert 'id="streammachine.frames.dataframe.streams_to_dataframe"' in frames
    assert "include_sequence" in frames  # a parameter's description, from the docstring


def test_home_is_the_readme_intro_and_links_stay_in_the_site(site: Path) -> None:
    home = (site / "index.html").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "Run event-driven Python workers on Redis Streams." in readme
    assert "Run event-driven Python workers on Redis Streams." in home
    assert "--8&lt;--" not in home and "--8<--" not in home  # the include was expanded
    assert 'href="examples/"' in home  # the README's examples/ link points into the site
    examples = (site / "examples" / "index.html").read_text(encoding="utf-8")
    for path in sorted((ROOT / "examples").glob("*.py")):
        assert f"<code>{path.name}</code>" in examples, path.name
