"""API tokens: named, with a role, kept only as SHA-256 digests.

``write`` tokens may do everything (upload, analyze, delete, open PACS studies); ``read`` tokens
(a viewer's) only read: lists, results, images, metrics. The service never keeps a token itself:
the ones given in the environment are hashed when the service starts, and a tokens file holds
digests only, one ``NAME ROLE sha256:HEX`` a line (``#`` starts a comment)::

    python -m cxrtriage.serve.tokens radiology-viewer read   # prints a new token and its line

A token is a random string of at least 128 bits, so one round of SHA-256 is enough to keep it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

ROLES = ("read", "write")
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_LINE = re.compile(r"^(?P<name>[A-Za-z0-9_.@-]{1,64})\s+(?P<role>read|write)\s+sha256:(?P<hex>[0-9a-fA-F]{64})$")


class TokenConfigError(ValueError):
    """A tokens file that cannot be used (the message says which line and why)."""


@dataclass(frozen=True)
class Token:
    name: str
    role: str
    digest: bytes  # SHA-256 of the token

    @property
    def can_write(self) -> bool:
        return self.role == "write"


def digest(token: str | bytes) -> bytes:
    raw = token.encode() if isinstance(token, str) else token
    return hashlib.sha256(raw.strip()).digest()


def hashed_line(name: str, role: str, token: str) -> str:
    """The tokens-file line for ``token``."""
    return f"{name} {role} sha256:{digest(token).hex()}"


def read_tokens_file(path: str | Path) -> list[Token]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise TokenConfigError(f"cannot read the tokens file {p}: {exc.strerror or exc}") from exc
    out: list[Token] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = _LINE.match(line)
        if m is None:
            raise TokenConfigError(f"{p}, line {n}: expected 'NAME read|write sha256:HEX' (64 hex digits); "
                                   "make one with: python -m cxrtriage.serve.tokens NAME ROLE")
        out.append(Token(m["name"], m["role"], bytes.fromhex(m["hex"])))
    return out


class TokenTable:
    """The tokens the service accepts (empty: the API is open)."""

    def __init__(self, tokens: list[Token]):
        names = [t.name for t in tokens]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise TokenConfigError(f"token names must be unique (repeated: {', '.join(sorted(dup))})")
        self.tokens = tuple(tokens)

    @classmethod
    def from_settings(cls, settings) -> TokenTable:
        tokens = []
        if settings.token:
            tokens.append(Token("api-token", "write", digest(settings.token)))
        if settings.viewer_token:
            tokens.append(Token("viewer", "read", digest(settings.viewer_token)))
        if settings.tokens_file is not None:
            tokens += read_tokens_file(settings.tokens_file)
        return cls(tokens)

    def __bool__(self) -> bool:
        return bool(self.tokens)

    def find(self, given: bytes) -> Token | None:
        """The token whose digest matches ``given`` (every entry compared, in constant time each)."""
        d = digest(given)
        found = None
        for t in self.tokens:
            if hmac.compare_digest(d, t.digest):
                found = t
        return found


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[1] not in ROLES or not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", args[0]):
        print("usage: python -m cxrtriage.serve.tokens NAME read|write", file=sys.stderr)
        return 2
    token = secrets.token_urlsafe(32)
    print(f"token (give it to its holder; it is not stored): {token}")
    print(f"line for CXR_TOKENS_FILE:                       {hashed_line(args[0], args[1], token)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
