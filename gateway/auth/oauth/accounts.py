"""Who a delegated login signs in as: a local account linked by a verified e-mail address (only where
the provider's config allows it), else the account ``{provider}:{subject}``, created at its first login
with the roles the provider's claims map to and refreshed at each one. ProviderUser in, AuthenticatedUser out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ...config.load import ProviderConfig
from ...errors import BrowserLoginFailed
from ..accounts.directory import DELEGATED_USERNAME, AuthenticatedUser, InvalidAccount, UserDirectory, is_delegated
from .clients import ProviderUser

log = logging.getLogger("tokengate.oauth")


async def account_for(provider: str, cfg: ProviderConfig, user: ProviderUser, users: UserDirectory,
                      default_roles: Sequence[str]) -> AuthenticatedUser:
    """Raises BrowserLoginFailed (403) for a disabled account, (401) for a subject that cannot name one."""
    if cfg.link_by_verified_email and user.email_verified and user.email:
        linked = await _linked_account(user.email, users)
        if linked is not None:
            return linked
    username = f"{provider}:{user.subject}"
    if not DELEGATED_USERNAME.fullmatch(username):
        log.info("delegated subject refused", extra={"provider": provider})
        raise BrowserLoginFailed("subject_unusable", "The provider named you in a way this gateway cannot use.")
    roles = mapped_roles(cfg.roles.claim, cfg.roles.map, user.claims, cfg.roles.default or tuple(default_roles))
    email = user.email if user.email_verified else None   # an unverified address is never passed on as the user's
    existing = await users.get(username) if users.editable else None
    if existing is not None and existing.disabled:
        raise BrowserLoginFailed("account_disabled", "This account is disabled.", 403)
    try:
        record = await users.upsert_delegated(username, roles, email)
    except InvalidAccount:
        email = None   # an address the accounts refuse (a control character ...) is dropped, not the login
        record = await users.upsert_delegated(username, roles, None)
    if record is not None and record.disabled:
        raise BrowserLoginFailed("account_disabled", "This account is disabled.", 403)
    return AuthenticatedUser(username, tuple(roles), email)


async def _linked_account(email: str, users: UserDirectory) -> AuthenticatedUser | None:
    """The one local account whose address equals ``email`` case-insensitively; None for none or several."""
    if not users.editable:
        return None
    wanted = email.casefold()
    matches = [r for r in await users.list()
               if r.email and r.email.casefold() == wanted and not is_delegated(r.username)]
    if len(matches) != 1:
        if matches:
            log.info("e-mail address matches several accounts: not linked", extra={"matches": len(matches)})
        return None
    account = matches[0]
    if account.disabled:
        raise BrowserLoginFailed("account_disabled", "This account is disabled.", 403)
    return AuthenticatedUser(account.username, account.roles, account.email)


def mapped_roles(claim: str | None, mapping: dict[str, tuple[str, ...]], claims: Any,
                 default: Sequence[str]) -> tuple[str, ...]:
    """The roles of every value of ``claim`` (a string or a list of strings) that ``mapping`` names, in
    order and without repeats; ``default`` when none maps."""
    value = claims.get(claim) if claim and isinstance(claims, dict) else None
    values = [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)] \
        if isinstance(value, list) else []
    roles = [role for v in values for role in mapping.get(v, ())]
    return tuple(dict.fromkeys(roles)) if roles else tuple(default)
