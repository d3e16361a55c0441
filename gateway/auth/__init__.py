"""The gateway's own endpoints under auth.prefix: it issues, refreshes and ends tokens.

routes (login, refresh, logout, verify, JWKS), endpoints (how each is registered, with its 405s),
account_routes (signup, forgot/reset password), openapi (the document of all), sessions (refresh
families and rotation), cookies (the ones a login sets), audit (an event's audit line), ratelimit, revocation (what a revocation
names, used by these routes, the admin API and the CLI), accounts/ (the account directories and
everything about passwords and reset mail), oauth/ (delegated login and the HTML pages).

May import: pipeline, forward, steps, store, config, errors and the top-level modules; never server,
admin, cli or dev.
"""
