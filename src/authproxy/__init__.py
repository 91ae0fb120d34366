"""authproxy: an authenticating HTTP/1.1 forward proxy, a client that answers 407, and the auth core both share."""

__version__ = "0.1.0"
