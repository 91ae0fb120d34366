"""The sans-IO authentication core: header grammar, Basic, Digest, nonces, verifier and responder.

Nothing in this package does IO: no sockets, no files, no clock or random source of its own.
"""
