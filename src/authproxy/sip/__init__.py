"""SIP (RFC 3261) on the auth core: message parsing and building (``parse``, ``message``, ``fields``), the
401/407 challenge (``challenge``), verification of the answer (``verify``), and the client side: answering a
401/407 (``client``) and REGISTER over UDP (``udp``). The authenticating SIP proxy (``authproxy sip serve``) is
still to come."""
