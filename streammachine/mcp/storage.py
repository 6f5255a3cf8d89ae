"""The storage and object tools of the MCP server (the app's shared `Storage` and
`RedisObjectStorage`) and their output models, without the `mcp` SDK; `server` registers
them.

Example:
    >>> store = StorageTools(tools)  # doctest: +SKIP
    >>> (await store.storage_read("beats")).value  # doctest: +SKIP
    42
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, Field

from ..exceptions import StreamMachineError, UnsafePickleError
from ..state.objstore import RedisObjectStorage
from .tools import (
    MAX_RESULT_BYTES,
    Bounded,
    ConfirmedBy,
    ToolFailure,
    Tools,
    clip,
    jsonable,
)

__all__ = ["StorageTools"]

MAX_WRITE_BYTES = 1_000_000

# -- argument types ---------------------------------------------------------------------------

Namespace = Annotated[
    str | None,
    Field(description="Storage namespace (letters, digits, _ . -); default: the server's."),
]
ObjNamespace = Annotated[
    str, Field(description="Object storage namespace (letters, digits, _ . -).")
]
ObjPattern = Annotated[str, Field(min_length=1, max_length=256, description="Glob; '*' = all.")]
Key = Annotated[str, Field(min_length=1, max_length=1024, description="The key.")]

# -- output models ----------------------------------------------------------------------------


class ValueResult(Bounded):
    namespace: str
    key: str
    found: bool
    type: str | None = None
    format: str | None = None
    value: Any = None


class WriteResult(BaseModel):
    namespace: str
    key: str
    ttl_s: float | None


class DeleteResult(BaseModel):
    namespace: str
    deleted: int = Field(description="How many keys were deleted.")
    confirmed_by: ConfirmedBy


class TableInfo(BaseModel):
    table: str
    shards: int
    keys: int


class TablesResult(BaseModel):
    tables: list[TableInfo]


class TableValues(Bounded):
    table: str
    values: dict[str, Any] = Field(description="The keys found, with their values.")
    missing: list[str] = Field(description="The keys the table does not hold.")


class KeysResult(Bounded):
    namespace: str
    keys: list[str]


def _bounded_value(value: Any) -> tuple[Any, bool, str | None]:
    data = jsonable(value)
    text = json.dumps(data, ensure_ascii=False)
    if len(text) <= MAX_RESULT_BYTES:
        return data, False, None
    note = f"the value is {len(text)} characters of JSON; showing the start as text"
    return text[:MAX_RESULT_BYTES], True, note


def _type_name(value: Any) -> str:
    t = type(value)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


# -- the tools ------------------------------------------------------------------------------------


class StorageTools:
    """The storage and object tools, over the server's `Tools` (its connection and settings).

    Example:
        >>> StorageTools(tools).storage_keys  # doctest: +SKIP
    """

    def __init__(self, tools: Tools) -> None:
        self.tools = tools

    def objects(self, namespace: str) -> RedisObjectStorage:
        """The object storage of `namespace` on the server's connection."""
        return RedisObjectStorage(
            namespace=namespace, redis=self.tools.conn, secret_key=self.tools.settings.secret_key
        )

    # -- tables (read-only)

    async def table_list(self) -> TablesResult:
        """List the app's tables (`app.table`): name, shards holding keys, and key count."""
        from ..state.browse import find_tables, table_count

        client = self.tools.conn.client
        found = await find_tables(client)
        return TablesResult(
            tables=[
                TableInfo(table=n, shards=len(s), keys=await table_count(client, n))
                for n, s in list(found.items())[:200]
            ]
        )

    async def table_get(
        self,
        table: Annotated[str, Field(min_length=1, max_length=256, description="Table name.")],
        keys: Annotated[list[Key], Field(min_length=1, max_length=100, description="Keys.")],
    ) -> TableValues:
        """Read up to 100 keys of a table (every shard of a partitioned table is searched)."""
        from ..state.browse import table_get

        client = self.tools.conn.client
        values: dict[str, Any] = {}
        missing: list[str] = []
        for key in keys:
            found, value = await table_get(client, table, key)
            if found:
                values[key] = _bounded_value(value)[0]
            else:
                missing.append(key)
        return TableValues(table=table, values=values, missing=missing)

    # -- storage

    async def storage_read(self, key: Key, namespace: Namespace = None) -> ValueResult:
        """Read a value of the app's shared Storage (what `app.storage.read` returns)."""
        store = self.tools.storage(namespace)
        missing = object()
        value = await store.read(key, missing)
        if value is missing:
            return ValueResult(namespace=store.namespace, key=key, found=False)
        data, cut, note = _bounded_value(value)
        return ValueResult(
            namespace=store.namespace, key=key, found=True, type=_type_name(value),
            value=data, truncated=cut, note=note,
        )  # fmt: skip

    async def storage_write(
        self,
        key: Key,
        value: Annotated[Any, Field(description="Any JSON value.")],
        namespace: Namespace = None,
        ttl_s: Annotated[float | None, Field(gt=0, description="Expire after seconds.")] = None,
    ) -> WriteResult:
        """Store a JSON value under a key of the shared Storage, replacing the old value (and its
        TTL); every process of the app sees it at once. Counters: ints are stored as numbers."""
        size = len(json.dumps(value, default=str))
        if size > MAX_WRITE_BYTES:
            raise ToolFailure(
                f"argument 'value': {size} bytes of JSON; the limit is {MAX_WRITE_BYTES}"
            )
        store = self.tools.storage(namespace)
        await store.write(key, value, ttl_s=ttl_s)
        return WriteResult(namespace=store.namespace, key=key, ttl_s=ttl_s)

    async def storage_delete(
        self, key: str, namespace: str | None, confirmed_by: ConfirmedBy
    ) -> DeleteResult:
        """Delete one key of the shared Storage. Needs confirmation: the user is asked when the
        client supports it; otherwise pass confirm: true once the user agreed."""
        store = self.tools.storage(namespace)
        deleted = int(await store.delete(key))
        return DeleteResult(namespace=store.namespace, deleted=deleted, confirmed_by=confirmed_by)

    async def storage_keys(
        self,
        namespace: Namespace = None,
        pattern: Annotated[str | None, Field(max_length=256, description="Glob.")] = None,
        limit: Annotated[int, Field(ge=1, le=10000)] = 1000,
    ) -> KeysResult:
        """List the keys of the shared Storage (sorted), all or those matching a glob."""
        store = self.tools.storage(namespace)
        return self._keys(store.namespace, await store.keys(pattern), limit)

    async def storage_clear(self, namespace: str | None, confirmed_by: ConfirmedBy) -> DeleteResult:
        """Delete every key of one Storage namespace (nothing outside it). Needs confirmation:
        the user is asked when the client supports it; otherwise pass confirm: true."""
        store = self.tools.storage(namespace)
        n = len(await store.keys())
        await store.clear()
        return DeleteResult(namespace=store.namespace, deleted=n, confirmed_by=confirmed_by)

    def _keys(self, namespace: str, keys: list[str], limit: int) -> KeysResult:
        shown = [clip(k, 1024)[0] for k in keys[:limit]]
        over = len(keys) > limit or len(json.dumps(shown)) > MAX_RESULT_BYTES
        while shown and len(json.dumps(shown)) > MAX_RESULT_BYTES:
            shown = shown[: len(shown) // 2]
        note = f"showing {len(shown)} of {len(keys)} keys; use a pattern" if over else None
        return KeysResult(namespace=namespace, keys=shown, truncated=over, note=note)

    # -- objects

    async def obj_get(self, key: Key, namespace: ObjNamespace = "objects") -> ValueResult:
        """Read an object of RedisObjectStorage. Pickles are unpickled only when signed with this
        server's STREAMMACHINE_SECRET_KEY (unpickling runs code); msgpack values are safe and
        always returned. Anything else is refused with the reason."""
        store = self.objects(namespace)
        missing = object()
        fmt = "pickle"
        try:
            value = await store.retrieve_with_pickle(key, missing)
        except UnsafePickleError as refusal:
            try:  # plain data stored with store() is msgpack, which is safe to decode
                value, fmt = await store.retrieve(key, missing), "msgpack"
            except StreamMachineError:
                raise ToolFailure(f"refused: {refusal}") from None
        if value is missing:
            return ValueResult(namespace=namespace, key=key, found=False)
        data, cut, note = _bounded_value(value)
        return ValueResult(
            namespace=namespace, key=key, found=True, type=_type_name(value), format=fmt,
            value=data, truncated=cut, note=note,
        )  # fmt: skip

    async def obj_list(
        self,
        namespace: ObjNamespace = "objects",
        pattern: Annotated[str, Field(min_length=1, max_length=256)] = "*",
        limit: Annotated[int, Field(ge=1, le=10000)] = 1000,
    ) -> KeysResult:
        """List the object keys of a RedisObjectStorage namespace matching a glob (SCAN)."""
        return self._keys(namespace, await self.objects(namespace).list_keys(pattern), limit)

    async def obj_delete(
        self, pattern: str, namespace: str, confirmed_by: ConfirmedBy
    ) -> DeleteResult:
        """Delete the objects of ONE RedisObjectStorage namespace whose keys match a glob; never
        touches keys outside that namespace ('*' empties the namespace only). Needs confirmation:
        the user is asked when the client supports it; otherwise pass confirm: true."""
        deleted = await self.objects(namespace).delete_keys(pattern)
        return DeleteResult(namespace=namespace, deleted=deleted, confirmed_by=confirmed_by)
