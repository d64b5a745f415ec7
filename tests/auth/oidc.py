"""A real OpenID Connect provider for the sign-in tests: npm's `oidc-provider` on Node.

`tests/auth/oidc_provider/` holds its package.json (the version pinned, with its lock file) and
`provider.mjs`, a small config script. The first use installs the package into that folder's
git-ignored `node_modules` with `npm ci` (as `make test` does). Each provider gets its own
signing key, made here, so tests can also sign tokens with the provider's real key (an expired
one, say) or with another key (a forged one).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from joserfc.jwk import RSAKey

from app.config import Settings

PACKAGE = Path(__file__).parent / "oidc_provider"
CLIENT_ID = "teller"
CLIENT_SECRET = "teller-client-secret-for-tests"  # noqa: S105 - a test provider's client


def ensure_installed() -> None:
    """`npm ci` into tests/auth/oidc_provider/node_modules when it is not there yet."""
    if (PACKAGE / "node_modules" / "oidc-provider" / "package.json").exists():
        return
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise RuntimeError(
            "Node.js and npm are needed for the OIDC tests (apt-get install nodejs npm)"
        )
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--prefix", str(PACKAGE)],
        check=True,
        capture_output=True,
        timeout=300,
    )


@dataclass(frozen=True)
class OidcServer:
    issuer: str
    key: RSAKey
    """The provider's signing key (private part included, for tests that sign tokens)."""

    def sign(self, claims: dict, key: RSAKey | None = None) -> str:
        from joserfc import jwt

        signer = key or self.key
        return jwt.encode({"alg": "RS256", "kid": signer.kid}, claims, signer)


def new_key(kid: str = "teller-test-key") -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})


@contextlib.contextmanager
def oidc_provider(
    port: int, redirect_uris: list[str], accounts: dict[str, dict] | None = None
) -> Iterator[OidcServer]:
    """Run the provider at http://127.0.0.1:PORT until the block ends."""
    ensure_installed()
    issuer = f"http://127.0.0.1:{port}"
    key = new_key()
    root = Path(tempfile.mkdtemp(prefix="teller-oidc-"))
    config = {
        "issuer": issuer,
        "port": port,
        "jwks": {"keys": [key.as_dict(private=True)]},
        "accounts": accounts or {},
        "clients": [
            {
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "redirect_uris": redirect_uris,
                "grant_types": ["authorization_code"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "client_secret_basic",
            }
        ],
    }
    (root / "config.json").write_text(json.dumps(config))
    log = (root / "provider.log").open("w")
    process = subprocess.Popen(
        ["node", str(PACKAGE / "provider.mjs"), str(root / "config.json")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NODE_ENV": "test"},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                url = f"{issuer}/.well-known/openid-configuration"
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "the OIDC provider did not start: " + (root / "provider.log").read_text()
                )
            time.sleep(0.1)
        yield OidcServer(issuer, key)
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        if process.poll() is None:
            process.kill()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


ACCOUNTS = {  # the provider's people and their groups
    "alice": {"groups": ["finance", "emea"], "email": "alice@corp.test"},
    "dave": {"groups": ["teller-admins"]},
    "root": {"groups": []},
}


def settings_for(root: Path, issuer: str, **overrides: object) -> Settings:
    """Teller signing in through the provider at `issuer` ("teller-admins" are admins)."""
    values: dict[str, object] = {
        "data_dir": root / "data",
        "models_dir": root / "models",
        "base_model": "scripted",
        "oidc_issuer": issuer,
        "oidc_client_id": CLIENT_ID,
        "oidc_client_secret": CLIENT_SECRET,
        "oidc_admin_group": "teller-admins",
        "oidc_display_name": "Corp SSO",
        "oidc_scopes": "openid profile email groups",
    }
    values.update(overrides)
    return Settings(**values)
