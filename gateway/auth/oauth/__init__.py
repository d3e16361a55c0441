"""Delegated login (OAuth 2.0 / OpenID Connect): the providers, the pending login's sealed cookie, the
start and callback endpoints, the ``rd`` check, accounts from a provider, and the HTML pages.

May import: auth (sessions, cookies, accounts), steps, store, config, logs, metrics, errors.
"""
