"""Accounts: base (the account rules and the UserDirectory interface), directory (the store's
accounts and the choice of directory), file (auth.users: {file: ...}), remote (a credentials
service), passwords (argon2), policy (what a new password must be), resets (reset tokens and their
mail), mail (SMTP or the log).

May import what auth may, except auth's own routes.
"""
