"""The command layer the CLI, the dashboard and MCP share: read-only views (`queries` of streams
and groups, `instances`, `deadletters`, `pending`, the `inspector`), the operator actions
(`agents` pause/resume, `replay` of dead letters, `pending` hand-back and dead-lettering, `rewind`,
`scheduled` promote/cancel; named once in `actions`), the `audit` trail every action writes, the
`fence` every take-away uses, and `asyncapi` (an app's AsyncAPI document)."""
