"""Step 5: Rule + Identity -> allowed (returns None), or Forbidden (403). Roles are any-of."""

from __future__ import annotations

from ..config.rules import Rule
from ..errors import Forbidden, MissingToken
from .identity import Identity


def authorize(rule: Rule, identity: Identity | None) -> None:
    """Let the caller through or raise. Raises MissingToken (401) if a non-public rule gets no
    identity (fail closed), Forbidden (403) naming the roles needed if the caller has none of them."""
    if rule.public:
        return
    if identity is None:
        raise MissingToken()
    if rule.roles is None or identity.has_any_role(rule.roles):
        return
    # The description names the rule's roles (config, not secret); never the token or the caller's claims.
    raise Forbidden(f"this route needs one of the roles: {', '.join(sorted(rule.roles))}")
