"""SIP (RFC 3261) on the auth core: message parsing and building, the 401/407 challenge, verification of the
answer. The authenticating SIP proxy (``authproxy sip serve``) is still to come."""
