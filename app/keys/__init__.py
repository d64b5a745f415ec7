"""API keys for the OpenAI-compatible `/v1` endpoints: create, list, revoke, authenticate."""
