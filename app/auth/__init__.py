"""Accounts: users, passwords, server-side sessions, login throttling and per-user limits."""
