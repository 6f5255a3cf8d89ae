"""CLI commands that act on running apps: `pause`, `resume`, `agents`, `pending` (list, and take
entries away: `pending dead-letter`, `pending hand-back`), `rewind`, and `audit` (what operators
did)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import DefaultToList, JsonOut, check_name, command, dumps, fail, out, safe, with_redis

if TYPE_CHECKING:
    from ..connection import RedisConnection

AppName = Annotated[str, typer.Option("--app", help="The app's name (App(name=...)).")]
Agent = Annotated[str, typer.Argument(help="The agent's name (its function's, or name=).")]
Stream = Annotated[str, typer.Argument(help="The stream.")]
Wide = Annotated[bool, typer.Option("--wide", help="Every column, however wide.")]
Group = Annotated[str | None, typer.Option("--group", help="One group (default: all).")]
Need = Annotated[str, typer.Option("--group", help="The consumer group.")]
Ids = Annotated[list[str], typer.Option("--id", help="A pending entry's id (repeatable).")]
Consumer = Annotated[
    str | None,
    typer.Option("--consumer", help="Only while this consumer holds it (or: only its)."),
]
Yes = Annotated[bool, typer.Option("--yes", help="Really take the entries away.")]


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A Rich table on a terminal (data escaped, fitted to its width), plain lines in a pipe."""
    if not sys.stdout.isatty():
        for row in rows:
            out("  ".join(safe(c) for c in row))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(Text(safe("—" if c is None else c)) for c in row))
    Console().print(table)


def _check_names(app: str, agent: str) -> None:
    check_name("app name", app)
    check_name("agent name", agent)


def _state(a: dict[str, Any]) -> str:
    if not a["paused"]:
        return "paused here" if a["paused_instances"] else "running"
    if a["instances"] == 0:
        return "paused (not running)"
    if a["reading"]:
        return f"pausing ({a['reading']} still read)"
    return "paused"


def _register_pause(app: typer.Typer) -> None:
    @command(app, "pause")
    def pause(agent: Agent, app_name: AppName, redis_url: str | None = None) -> None:
        """Pause AGENT of an app in every process and host (and in workers started later).

        Each process stops reading the agent's stream within about a second; handlers in
        flight finish and commit.
        """
        from ..admin.agents import pause_agent
        from ..admin.audit import Actor

        _check_names(app_name, agent)
        r = with_redis(redis_url, lambda c: pause_agent(c, app_name, agent, actor=Actor.cli()))
        note = "" if r["changed"] else " (it was paused already)"
        if not r["running"]:
            note += f"; no instance of {app_name!r} runs it now, so it starts paused"
        out(f"paused {safe(agent)} of {safe(app_name)}{safe(note)}")

    @command(app, "resume")
    def resume(agent: Agent, app_name: AppName, redis_url: str | None = None) -> None:
        """Let a paused AGENT read again in every process and host."""
        from ..admin.agents import resume_agent
        from ..admin.audit import Actor

        _check_names(app_name, agent)
        r = with_redis(redis_url, lambda c: resume_agent(c, app_name, agent, actor=Actor.cli()))
        note = "" if r["changed"] else " (it was not paused)"
        out(f"resumed {safe(agent)} of {safe(app_name)}{note}")

    @command(app, "agents")
    def agents(json_out: JsonOut = False, wide: Wide = False, redis_url: str | None = None) -> None:
        """Each app's agents and their state (running, paused), from the running instances."""
        from ..admin.agents import list_agents

        rows = with_redis(redis_url, list_agents)
        if json_out:
            for a in rows:
                out(dumps(a))
            return
        if not rows:
            sys.stderr.write("no agents: no app instance is running and none is paused\n")
            return
        columns = ["App", "Agent", "State", "Inst."] + (["Stream", "Group"] if wide else [])
        _table(
            "Agents",
            columns,
            [
                [a["app"], a["agent"], _state(a), a["instances"]]
                + ([a["stream"], a["group"]] if wide else [])
                for a in rows
            ],
        )


def _register_pending(app: typer.Typer) -> None:
    pending = typer.Typer(
        name="pending",
        cls=DefaultToList,
        no_args_is_help=True,
        help="Pending entries: list (`pending STREAM`), dead-letter or hand back.",
    )
    app.add_typer(pending)

    @command(pending, "list")
    def list_(
        stream: Stream,
        group: Group = None,
        consumer: Consumer = None,
        count: Annotated[int, typer.Option("--count", min=1, max=10_000)] = 50,
        json_out: JsonOut = False,
        redis_url: str | None = None,
    ) -> None:
        """Each group's pending entries: consumer, idle time, deliveries, owner alive or not."""
        from ..admin.pending import list_pending

        check_name("stream name", stream)
        for name in (group, consumer):
            if name is not None:
                check_name("name", name)
        found = with_redis(
            redis_url, lambda c: list_pending(c, stream, group, consumer=consumer, count=count)
        )
        if not found["exists"]:
            fail(f"stream {stream!r} does not exist")
        if json_out:
            for g in found["groups"]:
                out(dumps({"stream": stream, **g}))
            return
        for g in found["groups"]:
            sys.stderr.write(f"{safe(stream)} / {safe(g['group'])}: {g['pending']} pending\n")
            rows = [
                [e["id"], e["consumer"], f"{e['idle_ms'] / 1000:.1f} s", e["deliveries"],
                 "yes" if e["alive"] else "NO"]
                for e in g["entries"]
            ]  # fmt: skip
            if rows:
                _table(f"{safe(g['group'])}", ["Id", "Consumer", "Idle", "Tries", "Alive"], rows)

    def _take(verb: str, fn_name: str, stream: str, group: str, ids: list[str],
              consumer: str | None, yes: bool, redis_url: str | None) -> None:  # fmt: skip
        from ..admin import pending as admin_pending
        from ..admin.audit import Actor
        from ..admin.ids import check_entry_id
        from ..exceptions import ConfigError

        check_name("stream name", stream)
        check_name("group name", group)
        try:
            for i in ids:
                check_entry_id(i, "--id")
        except ConfigError as exc:
            fail(str(exc), 2)
        if not yes:
            fail(f"{verb} takes entries away from their consumer: add --yes to do it", 2)
        fn = getattr(admin_pending, fn_name)
        r = with_redis(
            redis_url,
            lambda c: fn(c, stream, group, ids, consumer=consumer, actor=Actor.cli()),
        )
        for d in r["done"]:
            out(f"{verb}: {d['id']} (was held by {safe(d['consumer'])})")
        if r["stayed"]:
            why = "; ".join(f"{safe(s['id'])} ({safe(s['reason'])})" for s in r["stayed"][:20])
            fail(f"{len(r['stayed'])} stayed: {why}")

    @command(pending, "dead-letter")
    def dead_letter(
        stream: Stream, group: Need, ids: Ids, consumer: Consumer = None, yes: Yes = False,
        redis_url: str | None = None,
    ) -> None:  # fmt: skip
        """Move pending entries to STREAM:dead and acknowledge them (their consumer is fenced)."""
        _take("dead-lettered", "dead_letter_pending", stream, group, ids, consumer, yes, redis_url)

    @command(pending, "hand-back")
    def hand_back(
        stream: Stream, group: Need, ids: Ids, consumer: Consumer = None, yes: Yes = False,
        redis_url: str | None = None,
    ) -> None:  # fmt: skip
        """Take pending entries from their consumer so the group delivers them again."""
        _take("handed back", "hand_back_pending", stream, group, ids, consumer, yes, redis_url)


def register(app: typer.Typer) -> None:
    """Add `pause`, `resume`, `agents`, `pending`, `rewind` and `audit` to the CLI."""
    _register_pause(app)
    _register_pending(app)

    @command(app, "rewind")
    def rewind(
        stream: Stream,
        group: Annotated[str, typer.Option("--group", help="The consumer group.")],
        to: Annotated[
            str,
            typer.Option(
                "--to", metavar="ID|TIME", help="An id, a time (ISO 8601), a duration ago (10m), "
                "0 (the whole stream) or $ (the end).",
            ),
        ],
        yes: Annotated[bool, typer.Option("--yes", help="Really move the group.")] = False,
        json_out: JsonOut = False,
        redis_url: str | None = None,
    ) -> None:  # fmt: skip
        """Move a consumer group to an id or a time (XGROUP SETID); needs --yes.

        Says first how many entries it will handle again (or skip). Pending entries stay
        pending.
        """
        from ..admin.audit import Actor
        from ..admin.rewind import rewind_group
        from ..exceptions import ConfigError

        check_name("stream name", stream)
        check_name("group name", group)
        try:
            from ..admin.rewind import resolve_target

            resolve_target(to, "0-0")  # the form is checked before Redis is touched
        except ConfigError as exc:
            fail(str(exc), 2)

        async def run(conn: RedisConnection) -> dict[str, Any]:
            return await rewind_group(conn, stream, group, to, dry_run=not yes, actor=Actor.cli())

        plan = with_redis(redis_url, run)
        if json_out:
            out(dumps(plan))
        else:
            more = "more than " if plan["capped"] else ""
            what = (
                f"{more}{plan['again']:,} entries will be handled again"
                if plan["again"] or not plan["skipped"]
                else f"{more}{plan['skipped']:,} entries will be skipped"
            )
            head = "moved" if plan["done"] else "would move"
            out(
                f"{head} {safe(stream)} / {safe(group)} from {plan['from']} to {plan['to']}: {what}"
            )
        if not yes:
            fail("nothing changed: add --yes to move the group", 2)

    @command(app, "audit")
    def audit(
        count: Annotated[int, typer.Option("--count", min=1, max=10_000)] = 20,
        json_out: JsonOut = False,
        redis_url: str | None = None,
    ) -> None:
        """What operators did (from the CLI, the dashboard and MCP), newest first."""
        import time

        from ..admin.audit import read_audit

        found = with_redis(redis_url, lambda c: read_audit(c, count))
        if json_out:
            for a in found:
                out(dumps(a))
            return
        rows = [
            [time.strftime("%m-%d %H:%M:%S", time.localtime(a["at_ms"] / 1000)),
             f"{a['interface']}: {a['who']}", a["action"], a["target"], a["count"]]
            for a in found
        ]  # fmt: skip
        _table("Audit", ["When", "Who", "Action", "Target", "N"], rows)
