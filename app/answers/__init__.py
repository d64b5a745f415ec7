"""Rules every answering surface (chat, `/v1`) shares: input limits, owner checks, recovery."""
