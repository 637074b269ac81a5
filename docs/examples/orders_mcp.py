"""A small MCP server for the README's worked example: order lookups and refunds over stdio.

Run by the gateway itself (`tools.mcp.orders: { command: "python", args: [...] }`); try it
alone with `bot tools list`. It uses the official `mcp` SDK, which the gateway depends on.
"""

from mcp.server.mcpserver import MCPServer

ORDERS = {"A17": "shipped, arrives Tuesday", "B42": "being packed"}

server = MCPServer("orders")


@server.tool(description="Look up an order by its id, e.g. A17")
def lookup_order(order_id: str) -> str:
    return ORDERS.get(order_id.strip().upper(), f"there is no order {order_id}")


@server.tool(description="Refund an order (admins only)")
def refund(order_id: str) -> str:
    return f"order {order_id} refunded"


if __name__ == "__main__":
    server.run("stdio")
