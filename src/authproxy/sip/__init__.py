"""SIP (RFC 3261) on the auth core: message parsing and building (``parse``, ``message``, ``fields``), the
401/407 challenge (``challenge``), verification of the answer (``verify``), the client side: answering a
401/407 (``client``) and REGISTER over UDP (``udp``), and the authenticating proxy: its decisions, sans-IO
(``proxy``), its log line (``log``) and its asyncio driver (``serve``)."""
