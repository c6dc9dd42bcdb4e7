"""Drives `anchor mcp` with the official MCP Python SDK, as an assistant would.

Usage: mcp_client.py stdio ANCHOR_BINARY SCENARIO [CODE_DIR]
       mcp_client.py http URL SCENARIO [CODE_DIR]

SCENARIO is `full` (every tool, in an order that builds on itself), `toggle` (a read, then a
write that a viewer's token may not do) or `offline` (list the tools, then one call). The stdio
child gets this process's ANCHOR_URL / ANCHOR_TOKEN / ANCHOR_PROJECT / ANCHOR_ENV /
XDG_CONFIG_HOME / HOME. Over HTTP, MCP_BEARER (when set) is sent as `Authorization: Bearer`
with every request. Prints one JSON document: the tools as listed, and each call's isError and
text; or, when the server refuses the session (HTTP without a usable bearer), `refused` with the
error. The Rust test (tests/mcp.rs) judges them.
"""

import asyncio
import json
import os
import sys

try:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client
    from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client
except ImportError as error:  # the Rust test reports this line and fails
    print(f"MISSING-MCP-PACKAGE: {error}", file=sys.stderr)
    sys.exit(3)


def full_calls(code_dir):
    return [
        ("create_flag", {"key": "checkout", "description": "the new checkout"}),
        ("create_flag", {"key": "unused-banner"}),
        ("list_flags", {}),
        ("list_environments", {}),
        ("get_flag", {"flag": "checkout"}),
        ("get_flag", {"flag": "no-such-flag"}),
        ("toggle_flag", {"flag": "checkout", "environment": "production", "on": True,
                         "comment": "from an assistant"}),
        ("update_targeting", {"flag": "checkout", "environment": "production",
                              "targets": {"on": ["user-1"]}, "defaultServe": {"variant": "off"}}),
        ("set_rollout", {"flag": "checkout", "environment": "production", "variant": "on",
                         "percent": 25}),
        ("set_rollout", {"flag": "checkout", "environment": "production", "variant": "on",
                         "percent": 150}),
        ("create_flag", {"key": "theme", "kind": "string"}),
        ("explain_evaluation", {"flag": "checkout", "environment": "production",
                                "context": {"targetingKey": "user-1"}}),
        ("start_release", {"flag": "checkout", "environment": "production",
                           "control": "off", "treatment": "on"}),
        ("get_release", {"release": "checkout", "environment": "production"}),
        ("pause_release", {"release": "checkout", "environment": "production"}),
        ("rollback_release", {"release": "checkout", "environment": "production"}),
        ("read_audit_log", {"flag": "checkout", "limit": 5}),
        ("find_stale_flags", {"paths": [code_dir], "days": 30}),
        ("generate_flag_code", {"flag": "checkout", "language": "typescript"}),
        ("generate_flag_code", {"flag": "checkout", "language": "rust"}),
        ("toggle_flag", {"flag": "checkout", "environment": "gated", "on": True}),
    ]


async def drive(session, scenario, code_dir):
    await session.initialize()
    listed = await session.list_tools()
    tools = []
    for tool in listed.tools:
        annotations = tool.annotations.model_dump(by_alias=True, exclude_none=True) \
            if tool.annotations else {}
        tools.append({"name": tool.name, "description": tool.description,
                      "inputSchema": tool.input_schema, "annotations": annotations})
    if scenario == "full":
        calls = full_calls(code_dir)
    elif scenario == "toggle":
        calls = [("get_flag", {"flag": "checkout"}),
                 ("toggle_flag", {"flag": "checkout", "environment": "production", "on": True})]
    else:
        calls = [("get_flag", {"flag": "checkout"})]
    results = []
    for name, arguments in calls:
        result = await session.call_tool(name, arguments)
        text = "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")
        results.append({"tool": name, "arguments": arguments, "isError": bool(result.is_error),
                        "text": text})
    return {"tools": tools, "calls": results}


def describe(error):
    """The messages of an exception and of every exception it groups."""
    nested = getattr(error, "exceptions", None)
    if nested:
        return "; ".join(describe(e) for e in nested)
    return f"{type(error).__name__}: {error}"


async def main():
    transport, target, scenario = sys.argv[1], sys.argv[2], sys.argv[3]
    code_dir = sys.argv[4] if len(sys.argv) > 4 else "."
    if transport == "stdio":
        passed = ["ANCHOR_URL", "ANCHOR_TOKEN", "ANCHOR_PROJECT", "ANCHOR_ENV",
                  "XDG_CONFIG_HOME", "HOME"]
        env = {k: os.environ[k] for k in passed if k in os.environ}
        params = StdioServerParameters(command=target, args=["mcp"], env=env)
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                report = await drive(session, scenario, code_dir)
    else:
        bearer = os.environ.get("MCP_BEARER")
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else None
        try:
            async with create_mcp_http_client(headers=headers) as http_client, \
                    streamable_http_client(target, http_client=http_client) as streams:
                read, write = streams[0], streams[1]
                async with ClientSession(read, write) as session:
                    report = await drive(session, scenario, code_dir)
        except Exception as error:  # the SDK raises (often grouped) when the server refuses
            report = {"refused": describe(error)}
    print(json.dumps(report))


asyncio.run(main())
