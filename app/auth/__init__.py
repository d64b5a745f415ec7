"""Accounts: users, passwords, server-side sessions and sign-in throttling."""
