"""The MCP server: `server` wires StreamMachine's tools into the `mcp` SDK (with `confirm`, the
confirmation of destructive tools, the only modules that import it); `tools` holds the shared
plumbing and the health/Redis tools, `results` what every result shares, `streams`, `storage`,
`ops` (the operator actions) and `ohlc` the other tool groups, `prompts` the guide and texts.
"""
