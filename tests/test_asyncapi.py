"""AsyncAPI documents of apps: their shape, the CLI, and the official parser's verdict.

The parser is `@asyncapi/parser` from npm, run by tests/asyncapi_validate.mjs under `node`. It
is looked for in $ASYNCAPI_PARSER_DIR (default: .npm-asyncapi at the repository root; .ci/run
installs it there) and installed there with npm when missing. Skipped with the reason only where
node or npm is missing, and never under CI (`CI` set), where that fails the run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from streammachine import App, Message
from streammachine.admin.asyncapi import asyncapi_document, to_json, to_yaml
from streammachine.process.importer import import_app

ROOT = Path(__file__).resolve().parent.parent
VALIDATOR = ROOT / "tests" / "asyncapi_validate.mjs"
PARSER_DIR = Path(os.environ.get("ASYNCAPI_PARSER_DIR") or ROOT / ".npm-asyncapi")
EXAMPLES = sorted(
    p
    for p in (ROOT / "examples").glob("*.py")
    if "App(" in p.read_text() and p.stem != "test_example_app"
)
TYPED = ROOT / "tests" / "apps" / "typed.py"


def typed_doc() -> dict[str, Any]:
    return asyncapi_document(import_app(f"{TYPED}:app"), server_url="redis://u:pw@db:6380/2")


def test_typed_app_channels_operations_and_payloads() -> None:
    doc = typed_doc()
    assert doc["asyncapi"] == "3.0.0" and doc["info"]["title"] == "typed_shop"
    assert doc["servers"]["redis"] == {
        "host": "db:6380", "protocol": "redis", "description": "Redis at redis://u:***@db:6380/2",
        "pathname": "/2",
    }  # fmt: skip
    ch = doc["channels"]
    assert ch["orders"]["address"] == "orders"
    assert ch["orders_failed"]["address"] == "orders:failed"
    assert ch["ticks"]["address"] == "ticks:p{partition}"
    assert ch["ticks"]["parameters"]["partition"]["enum"] == ["0", "1", "2"]
    ops = doc["operations"]
    bill = ops["bill"]
    assert bill["action"] == "receive" and bill["channel"] == {"$ref": "#/channels/orders"}
    assert bill["summary"] == "Bill each order."
    assert bill["x-streammachine"].items() >= {
        "group": "billing", "concurrency": 4, "dead_letter": "orders:failed", "max_deliveries": 5,
    }.items()  # fmt: skip
    assert "group `billing`" in bill["description"] and "`orders:failed`" in bill["description"]
    assert bill["messages"] == [{"$ref": "#/channels/orders/messages/Order"}]
    assert ops["bill.dead_letter"]["action"] == "send"
    assert ops["audit"]["x-streammachine"]["dead_letter"] is None
    assert "audit.dead_letter" not in ops
    assert ops["candles"]["x-streammachine"]["batch"] is True
    # Payloads: msgspec's JSON Schema for typed agents, a text map for the others.
    schemas = doc["components"]["schemas"]
    order = schemas["Order"]
    assert order["properties"]["total"] == {"type": "number"}
    assert order["required"] == ["id", "total", "items"]
    assert order["properties"]["ship_to"]["anyOf"][0] == {"$ref": "#/components/schemas/Address"}
    assert doc["components"]["messages"]["Order"]["payload"] == {
        "$ref": "#/components/schemas/Order"
    }
    assert schemas["StreamFields"]["additionalProperties"] == {"type": "string"}
    packed = doc["components"]["messages"]["Page_int_.json"]
    assert packed["payload"]["required"] == ["data"]
    assert packed["x-streammachine-schema"] == {"$ref": "#/components/schemas/Page_int_"}
    # What the app declares it produces.
    assert ops["send.invoices"]["messages"] == [{"$ref": "#/channels/invoices/messages/Invoice"}]
    assert ops["send.audit"]["messages"] == [{"$ref": "#/channels/audit/messages/Fields"}]
    # Every reference resolves.
    text = json.dumps(doc)
    for ref in set(_refs(doc)):
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        assert node, ref
    assert "pw" not in text


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_memory_url_has_no_server_and_an_empty_app_is_a_document() -> None:
    doc = asyncapi_document(App(name="empty", redis_url="memory://"))
    assert "servers" not in doc and doc["channels"] == {} and doc["operations"] == {}
    assert yaml.safe_load(to_yaml(doc)) == json.loads(to_json(doc)) == doc


def test_two_agents_of_one_name_get_distinct_operations() -> None:
    app = App(name="dup", redis_url="memory://")

    @app.agent("a", group="g", name="work")
    async def one(record: Message) -> None: ...

    @app.agent("b", group="g", name="work")
    async def two(record: Message) -> None: ...

    assert {"work", "work_2"} <= set(asyncapi_document(app)["operations"])


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": "memory://"}
    return subprocess.run(
        [sys.executable, "-m", "streammachine", "asyncapi", *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=60,
    )  # fmt: skip


def test_cli_json_yaml_output_and_errors(tmp_path: Path) -> None:
    result = _cli(f"{TYPED}:app")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["info"]["title"] == "typed_shop"
    result = _cli(f"{TYPED}:app", "--format", "yaml")
    assert yaml.safe_load(result.stdout)["operations"]["bill"]["action"] == "receive"
    out = tmp_path / "doc.yaml"
    result = _cli(f"{TYPED}:app", "--output", str(out))
    assert result.returncode == 0 and result.stdout == ""
    assert yaml.safe_load(out.read_text())["asyncapi"] == "3.0.0"  # the suffix chose YAML
    bad = _cli(f"{TYPED}:app", "--format", "xml")
    assert bad.returncode == 2 and bad.stderr == "error: --format must be json or yaml, not 'xml'\n"
    missing = _cli("nowhere.py:app")
    assert missing.returncode == 1 and missing.stderr.startswith("error: no such file")
    assert "Traceback" not in missing.stderr
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    broken = _cli(f"{tmp_path / 'broken.py'}:app")
    assert broken.returncode == 1
    assert broken.stderr.startswith("error: ") and broken.stderr.endswith("RuntimeError: boom\n")
    assert "Traceback" not in broken.stderr and broken.stderr.count("\n") == 1


# --- the official parser ----------------------------------------------------------------------


def _parser() -> Path:
    """The folder holding @asyncapi/parser (installed with npm when missing)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or (
        npm is None and not (PARSER_DIR / "node_modules/@asyncapi/parser").is_dir()
    ):
        missing = "node" if node is None else "npm"
        if os.environ.get("CI"):
            pytest.fail(
                f"CI needs {missing} to validate AsyncAPI documents (apt-get install nodejs npm)"
            )
        pytest.skip(f"{missing} is missing: cannot run the official AsyncAPI parser")
    if not (PARSER_DIR / "node_modules" / "@asyncapi" / "parser").is_dir():
        assert npm is not None
        done = subprocess.run(
            [npm, "install", "--prefix", str(PARSER_DIR), "--no-audit", "--no-fund",
             "@asyncapi/parser"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, f"npm could not install @asyncapi/parser:\n{done.stderr}"
    return PARSER_DIR


def _validate(files: list[Path]) -> list[dict[str, Any]]:
    parser_dir = _parser()
    result = subprocess.run(
        ["node", str(VALIDATOR), *map(str, files)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "ASYNCAPI_PARSER_DIR": str(parser_dir)},
    )  # fmt: skip
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == len(files), result.stdout + result.stderr
    return reports


def test_examples_and_a_typed_app_pass_the_official_parser(tmp_path: Path) -> None:
    files = []
    for path in [*EXAMPLES, TYPED]:
        doc = asyncapi_document(import_app(f"{path}:app"), server_url="redis://redis:6379/0")
        out = tmp_path / f"{path.stem}.json"
        out.write_text(to_json(doc))
        files.append(out)
    yaml_doc = tmp_path / "typed.yaml"
    yaml_doc.write_text(to_yaml(typed_doc()))
    files.append(yaml_doc)
    assert {f.stem for f in files} >= {"basic", "demo", "ohlc", "pipeline", "typed"}
    reports = _validate(files)
    assert [r for r in reports if not r["valid"] or r["errors"]] == []


def test_the_parser_rejects_a_broken_document(tmp_path: Path) -> None:
    """The validation above means something: a document with a dangling reference fails."""
    doc = typed_doc()
    doc["operations"]["bill"]["channel"] = {"$ref": "#/channels/nowhere"}
    del doc["info"]["version"]
    bad = tmp_path / "bad.json"
    bad.write_text(to_json(doc))
    (report,) = _validate([bad])
    assert not report["valid"] and report["errors"]
