"""The MCP server: `server` wires StreamMachine's tools into the `mcp` SDK (the only module of the
package that imports it); `tools` holds the shared plumbing and the health/Redis tools, `streams`,
`storage` and `ohlc` the other tool groups, `prompts` the guide and pattern texts.
"""
