"""An app's streams as an AsyncAPI 3.0 document: what it consumes, in which groups, and what it writes.

- a channel per stream an agent consumes (its `address` is the stream's name; a partitioned
  stream is one channel `<stream>:p{partition}` with the partition as a parameter), and one per
  dead-letter stream and per stream the app declares with `App.produces`;
- a `receive` operation per agent: its consumer group, concurrency and dead-letter stream are in
  the description and in the `x-streammachine` extension;
- a `send` operation per dead-letter stream (the runner writes it) and per `App.produces` stream;
- message payloads: an agent's `schema=` Struct as msgspec's JSON Schema (in
  `components.schemas`), else a map of text field names to text values.

The document is plain data (JSON-ready dicts); `to_json` and `to_yaml` render it.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import msgspec

from ..urls import mask_url

if TYPE_CHECKING:
    from ..app import App
    from ..consume.agent import Agent

__all__ = ["ASYNCAPI_VERSION", "asyncapi_document", "to_json", "to_yaml"]

ASYNCAPI_VERSION = "3.0.0"
#: The fields the runner adds to a dead letter (beside the original message's fields).
DEAD_LETTER_FIELDS = {
    "error": "the error's message",
    "error_type": "the exception's class name",
    "traceback": "the traceback (its last 4000 characters)",
    "deliveries": "how many times the message was delivered",
    "source_stream": "the stream the message came from",
    "source_id": "the message's entry id in that stream",
    "group": "the consumer group that failed it",
    "failed_at": "Unix time of the last failure, in seconds",
}
_FIELDS_SCHEMA = "StreamFields"
_DEAD_SCHEMA = "DeadLetter"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _ident(name: str) -> str:
    """A component key (AsyncAPI allows letters, digits, `.`, `-` and `_` only)."""
    return _UNSAFE.sub("_", name) or "_"


class _Builder:
    def __init__(self, app: App) -> None:
        self.app = app
        self.channels: dict[str, dict[str, Any]] = {}
        self.by_address: dict[str, str] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, dict[str, Any]] = {}
        self.schemas: dict[str, Any] = {}
        self.struct_refs: dict[type[msgspec.Struct], str] = {}

    # --- names ---------------------------------------------------------------------------

    def _unique(self, taken: dict[str, Any], name: str) -> str:
        base = key = _ident(name)
        n = 2
        while key in taken:
            key, n = f"{base}_{n}", n + 1
        return key

    # --- schemas -------------------------------------------------------------------------

    def add_structs(self, structs: list[type[msgspec.Struct]]) -> None:
        """Every Struct's JSON Schema, from one msgspec call so shared types get one name."""
        unique = list(dict.fromkeys(structs))
        if not unique:
            return
        refs, components = msgspec.json.schema_components(
            unique, ref_template="#/components/schemas/{name}"
        )
        # msgspec names generics like `Page[int]`; AsyncAPI keys cannot hold brackets.
        renamed = {name: _ident(name) for name in components}

        def fix(node: Any) -> Any:
            if isinstance(node, dict):
                out = {k: fix(v) for k, v in node.items()}
                ref = out.get("$ref")
                if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                    name = ref.rsplit("/", 1)[1]
                    out["$ref"] = "#/components/schemas/" + renamed.get(name, name)
                return out
            if isinstance(node, list):
                return [fix(v) for v in node]
            return node

        for name, schema in components.items():
            self.schemas[renamed[name]] = fix(schema)
        for struct, ref in zip(unique, refs, strict=True):
            self.struct_refs[struct] = fix(ref)["$ref"]

    def fields_schema(self) -> dict[str, str]:
        self.schemas.setdefault(
            _FIELDS_SCHEMA,
            {
                "type": "object",
                "description": "A stream entry's fields: text names to text values "
                "(numbers as decimal text, booleans as true/false, other values as JSON).",
                "additionalProperties": {"type": "string"},
            },
        )
        return {"$ref": f"#/components/schemas/{_FIELDS_SCHEMA}"}

    # --- messages ------------------------------------------------------------------------

    def message(self, schema: type[msgspec.Struct] | None, payload: str = "fields") -> str:
        """The id of the component message for records of `schema` laid out as `payload`."""
        if schema is None:
            key = "Fields"
            if key not in self.messages:
                self.messages[key] = {
                    "name": "Fields",
                    "title": "Field map",
                    "summary": "An entry of text fields.",
                    "payload": self.fields_schema(),
                }
            return key
        ref = self.struct_refs[schema]
        name = ref.rsplit("/", 1)[1]
        key = name if payload == "fields" else f"{name}.{payload}"
        if key in self.messages:
            return key
        doc = (schema.__doc__ or "").strip().split("\n\n")[0]
        message: dict[str, Any] = {"name": name, "title": schema.__name__}
        if doc:
            message["summary"] = " ".join(doc.split())
        if payload == "fields":
            message["description"] = (
                f"One stream field per field of {schema.__name__}, each value as text "
                "(numbers as decimal text, nested values as JSON); decoded and validated "
                "against this schema, and dead-lettered with the reason when it does not match."
            )
            message["payload"] = {"$ref": ref}
        else:
            media = "application/json" if payload == "json" else "application/msgpack"
            message["description"] = (
                f"A {schema.__name__} packed as {payload} in the entry's one field `data` "
                f"(its schema: {ref})."
            )
            message["payload"] = {
                "type": "object",
                "required": ["data"],
                "properties": {
                    "data": {
                        "type": "string",
                        "contentMediaType": media,
                        "description": f"the {schema.__name__} packed as {payload}",
                    }
                },
            }
            message["x-streammachine-schema"] = {"$ref": ref}
        self.messages[key] = message
        return key

    def dead_message(self) -> str:
        key = _DEAD_SCHEMA
        if key not in self.messages:
            self.schemas[_DEAD_SCHEMA] = {
                "type": "object",
                "description": "A message that failed `max_deliveries` times: its original "
                "fields as they arrived, plus why it failed. `streammachine dead replay` sends "
                "it back to `source_stream`.",
                "properties": {
                    name: {"type": "string", "description": text}
                    for name, text in DEAD_LETTER_FIELDS.items()
                },
                "required": list(DEAD_LETTER_FIELDS),
                "additionalProperties": {"type": "string"},
            }
            self.messages[key] = {
                "name": "DeadLetter",
                "title": "Dead letter",
                "payload": {"$ref": f"#/components/schemas/{_DEAD_SCHEMA}"},
            }
        return key

    # --- channels and operations ---------------------------------------------------------

    def channel(self, address: str, partitions: int | None, description: str) -> str:
        """The id of the channel for `address` (created on first use); with partitions, one
        channel `<address>:p{partition}` with the partition as a parameter."""
        full = f"{address}:p{{partition}}" if partitions else address
        if full in self.by_address:
            return self.by_address[full]
        cid = self._unique(self.channels, address)
        channel: dict[str, Any] = {"address": full, "description": description, "messages": {}}
        if partitions:
            channel["parameters"] = {
                "partition": {
                    "enum": [str(i) for i in range(partitions)],
                    "description": f"one of the {partitions} partition streams; "
                    "`send(..., key=)` picks it by a stable hash of the key",
                }
            }
        self.channels[cid] = channel
        self.by_address[full] = cid
        return cid

    def link(self, cid: str, message_id: str) -> dict[str, str]:
        """Add the component message to the channel; the reference an operation uses."""
        self.channels[cid]["messages"][message_id] = {"$ref": f"#/components/messages/{message_id}"}
        return {"$ref": f"#/channels/{cid}/messages/{message_id}"}

    def operation(self, name: str, body: dict[str, Any]) -> None:
        self.operations[self._unique(self.operations, name)] = body

    def add_agent(self, agent: Agent) -> None:
        cfg = agent.config
        partitions = cfg.partitions or None
        cid = self.channel(cfg.stream, partitions, f"The stream `{cfg.stream}`.")
        payload = agent.codec.payload if agent.codec is not None else "fields"
        ref = self.link(cid, self.message(agent.schema, payload))
        # One dead-letter stream per agent, partitioned or not (ConsumerConfig fills it in).
        dead = cfg.dead_letter or f"{cfg.stream}:dead"
        what = "a batch of messages per call" if agent.batch else "one message per call"
        text = (
            f"Agent `{agent.name}` in consumer group `{cfg.group}`: {cfg.concurrency} "
            f"consumer(s) per process, {what}, acked when the handler returns."
        )
        if cfg.max_deliveries:
            text += (
                f" A message that fails {cfg.max_deliveries} deliveries moves to the "
                f"dead-letter stream `{dead}`."
            )
        else:
            text += " Failed messages are retried without limit (no dead-letter stream)."
        body: dict[str, Any] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{cid}"},
            "messages": [ref],
            "title": agent.name,
            "description": text,
            "x-streammachine": {
                "agent": agent.name,
                "group": cfg.group,
                "concurrency": cfg.concurrency,
                "processes": cfg.processes,
                "batch": agent.batch,
                "start": cfg.start,
                "partitions": cfg.partitions,
                "max_deliveries": cfg.max_deliveries,
                "dead_letter": dead if cfg.max_deliveries else None,
            },
        }
        summary = (agent.fn.__doc__ or "").strip().split("\n")[0].strip()
        if summary:
            body["summary"] = summary
        self.operation(agent.name, body)
        if cfg.max_deliveries:
            dcid = self.channel(dead, None, f"Dead letters of `{cfg.stream}`.")
            dref = self.link(dcid, self.dead_message())
            self.operation(
                f"{agent.name}.dead_letter",
                {
                    "action": "send",
                    "channel": {"$ref": f"#/channels/{dcid}"},
                    "messages": [dref],
                    "title": f"{agent.name} dead letters",
                    "description": f"The runner writes a message of `{agent.name}` (group "
                    f"`{cfg.group}`) here after {cfg.max_deliveries} failed deliveries, "
                    "together with its ack, and `streammachine dead replay` sends it back.",
                },
            )

    def add_output(self, stream: str, schema: type[msgspec.Struct] | None) -> None:
        spec = self.app._partitions.get(stream)
        partitions = spec[0] if spec else None
        cid = self.channel(stream, partitions, f"The stream `{stream}`.")
        codec = self.app._packed.get(stream)
        payload = codec.payload if codec is not None and codec.schema is schema else "fields"
        ref = self.link(cid, self.message(schema, payload))
        self.operation(
            f"send.{stream}",
            {
                "action": "send",
                "channel": {"$ref": f"#/channels/{cid}"},
                "messages": [ref],
                "title": f"send to {stream}",
                "description": f"`{self.app.name}` appends entries to `{stream}` (XADD); "
                "inside a handler they are committed atomically with the ack of the message "
                "being handled.",
            },
        )


def _server(url: str) -> dict[str, Any] | None:
    """The Redis server object, or None for `memory://` and unix sockets (no network address)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme in ("memory", "unix"):
        return None
    netloc, _, path = rest.partition("/")
    host = netloc.rpartition("@")[2] or "localhost"
    server: dict[str, Any] = {
        "host": host,
        "protocol": "redis",
        "description": f"Redis at {mask_url(url)}",
    }
    if scheme != "redis":
        server["protocolVersion"] = scheme
    db = path.split("?")[0]
    if db:
        server["pathname"] = "/" + db
    return server


def asyncapi_document(
    app: App, *, version: str = "1.0.0", server_url: str | None = None
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of `app`'s streams, as JSON-ready data.

    Args:
        app: the app (its agents and `App.produces` declarations are read; nothing connects).
        version: the document's `info.version`.
        server_url: the Redis URL for `servers` (default: the app's; its password is masked,
            and `memory://` or a unix socket gives no server entry).

    Example:
        >>> doc = asyncapi_document(app)  # doctest: +SKIP
        >>> doc["operations"]["bill"]["x-streammachine"]["group"]  # doctest: +SKIP
        'billing'
    """
    b = _Builder(app)
    structs = [a.schema for a in app.agents if a.schema is not None]
    structs += [s for s in app.produced.values() if s is not None]
    b.add_structs(structs)
    for agent in app.agents:
        b.add_agent(agent)
    for stream, schema in app.produced.items():
        b.add_output(stream, schema)
    doc: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": app.name,
            "version": version,
            "description": f"The Redis Streams of the StreamMachine app `{app.name}`: "
            "what its agents consume (in which consumer groups) and what it writes.",
        },
        "defaultContentType": "application/json",
    }
    server = _server(server_url or app.redis.url)
    if server is not None:
        doc["servers"] = {"redis": server}
    doc["channels"] = b.channels
    doc["operations"] = b.operations
    components: dict[str, Any] = {}
    if b.messages:
        components["messages"] = b.messages
    if b.schemas:
        components["schemas"] = b.schemas
    if components:
        doc["components"] = components
    return doc


def to_json(doc: dict[str, Any]) -> str:
    """The document as indented JSON text."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def to_yaml(doc: dict[str, Any]) -> str:
    """The document as YAML text (key order kept)."""
    import yaml

    text: str = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)
    return text
