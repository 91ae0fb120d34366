"""The forward proxy: an asyncio.Protocol server that authenticates, routes and relays HTTP/1.1."""
