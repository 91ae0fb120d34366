"""What a verifier offers and accepts: the realm, the schemes (by registry name), Digest's algorithms, qop and
userhash, and the nonce lifetime; validated once, here, for the config and every other caller."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from authproxy.auth.digest import QOP_VALUES, get_algorithm
from authproxy.auth.errors import ConfigError
from authproxy.auth.schemes import SCHEMES, SchemeFactory
from authproxy.auth.text import realm_problem


@dataclass(frozen=True)
class AuthPolicy:
    """What the proxy offers in its 407 and accepts back. Names are normalised (schemes lower-case,
    algorithms to their wire spelling); anything unknown is a ConfigError naming the field."""

    realm: str
    schemes: tuple[str, ...] = ("digest", "basic")
    digest_algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    qop: tuple[str, ...] = ("auth", "auth-int")
    userhash: bool = True
    nonce_lifetime: float = 300.0
    #: The schemes that exist, by name, strongest first: what ``schemes`` may name, and the order of the
    #: challenges. The default is :data:`authproxy.auth.schemes.SCHEMES`; a caller may pass a larger one.
    known_schemes: Mapping[str, SchemeFactory] = field(default_factory=lambda: SCHEMES, repr=False, compare=False)

    def __post_init__(self) -> None:
        problem = realm_problem(self.realm)
        if problem is not None:
            raise ConfigError(f"realm: {problem}: {self.realm!r}")
        schemes = tuple(s.lower() for s in self.schemes)
        if not schemes:
            raise ConfigError("schemes: at least one scheme must be offered")
        for scheme in schemes:
            if scheme not in self.known_schemes:
                raise ConfigError(f"schemes: unknown scheme {scheme!r} (known: {', '.join(self.known_schemes)})")
        if len(set(schemes)) != len(schemes):
            raise ConfigError("schemes: listed twice")
        algorithms: list[str] = []
        for name in self.digest_algorithms:
            alg = get_algorithm(name)
            if alg is None:
                raise ConfigError(f"digest_algorithms: unknown algorithm {name!r}")
            algorithms.append(alg.name)
        if len(set(algorithms)) != len(algorithms):
            raise ConfigError("digest_algorithms: listed twice")
        qop = tuple(q.lower() for q in self.qop)
        for value in qop:
            if value not in QOP_VALUES:
                raise ConfigError(f"qop: unknown value {value!r} (known: {', '.join(QOP_VALUES)})")
        if len(set(qop)) != len(qop):
            raise ConfigError("qop: listed twice")
        if "digest" in schemes:
            if not algorithms:
                raise ConfigError("digest_algorithms: Digest is offered but no algorithm is configured")
            if not qop:
                # Without qop there is no nc, and without nc no replay protection: we never offer that.
                raise ConfigError("qop: Digest is offered but no qop is configured")
        if not (self.nonce_lifetime > 0 and math.isfinite(self.nonce_lifetime)):
            raise ConfigError(
                f"nonce_lifetime: must be a positive number of seconds, got {self.nonce_lifetime!r}"
            )
        object.__setattr__(self, "schemes", schemes)
        object.__setattr__(self, "digest_algorithms", tuple(algorithms))
        object.__setattr__(self, "qop", qop)
