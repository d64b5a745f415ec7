"""Admin console: one router module per page (users, audit, adapters, status)."""
