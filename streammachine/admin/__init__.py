"""The command layer the CLI, the dashboard and MCP share: `queries` (read-only views of streams,
groups, dead letters, instances), `replay` (dead letters sent back), `asyncapi` (an app's
AsyncAPI document)."""
