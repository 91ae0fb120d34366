"""authproxy's HTTP/1.1 proxy logic, sans-IO: a state machine per client connection (RFC 9110, RFC 9112).

Events go in as method calls (bytes read, EOF, back-pressure, a timer tick, a completion); commands come out as
calls on the sinks the driver implements (``authproxy.engine.commands``). Nothing here imports asyncio or
socket; ``authproxy.proxy`` is the asyncio driver. docs/architecture.md has the events, commands and states.
"""
