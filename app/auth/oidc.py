"""OpenID Connect sign-in: authorization code flow with PKCE, discovery, ID token validation.

`OidcProvider` is made once by the app's lifespan (when `TELLER_OIDC_ISSUER` is set). A sign-in
runs in two requests:

1. `begin`: a fresh `state`, `nonce` and PKCE verifier are stored server-side (table
   `sign_in_requests`, keyed by the SHA-256 of a random value the browser keeps in a cookie);
   the browser goes to the provider's authorization endpoint.
2. `finish`: the callback must come back to the same browser with the same `state`; the code
   is exchanged (with the verifier) at the token endpoint, and the ID token is checked: its
   signature against the provider's published keys (asymmetric algorithms only), issuer,
   audience (and `azp`), expiry, issue time and the `nonce` of step 1. The stored request is
   deleted first, so a callback can never be replayed.

Any failure is an `OidcError` whose message is meant for the sign-in page; the provider being
unreachable is `ProviderUnavailable` so the page can say so and offer local sign-in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy.orm import Session

from app.config import Settings
from app.store import account_crud as store
from app.store.models import utcnow

PROVIDER = "oidc"
COOKIE = "teller_oidc"
SIGN_IN_MINUTES = 10
"""A sign-in started longer ago than this is refused at the callback (start again)."""
METADATA_SECONDS = 600
"""Discovery document and keys are fetched again after this long (keys also on an unknown kid)."""
LEEWAY_SECONDS = 60
"""Clock difference allowed with the provider for `exp`, `iat` and `nbf`."""
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
"""Signatures accepted on ID tokens: the provider's keys, never `none` or a shared secret."""


class OidcError(Exception):
    """The sign-in failed; the message says why, in words for the sign-in page."""


class ProviderUnavailable(OidcError):
    """The provider could not be reached or answered nonsense."""


@dataclass(frozen=True)
class OidcIdentity:
    """Who the provider says signed in (from a validated ID token, plus userinfo)."""

    subject: str
    """`issuer|sub`: stable, never reassigned by the provider."""
    username: str
    email: str | None
    groups: list[str]
    claims: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Begun:
    """Where to send the browser, and the cookie value that binds the callback to it."""

    url: str
    cookie: str


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class OidcProvider:
    """One configured provider: its discovery document and keys (cached), the client."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.issuer = settings.oidc_issuer
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._fetched = 0.0
        self._lock = threading.Lock()

    # ---- discovery ------------------------------------------------------------------------

    def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = httpx.get(url, timeout=self.settings.oidc_timeout_seconds)
            response.raise_for_status()
            data = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ProviderUnavailable(
                f"The sign-in provider at {self.issuer} cannot be reached ({type(exc).__name__})."
            ) from None
        if not isinstance(data, dict):
            raise ProviderUnavailable(f"The sign-in provider at {self.issuer} answered nonsense.")
        return data

    def metadata(self, *, refresh: bool = False) -> dict[str, Any]:
        """The discovery document, checked to name this issuer and the endpoints we need.

        Raises:
            ProviderUnavailable: unreachable, or the document does not fit the issuer.
        """
        with self._lock:
            fresh = time.monotonic() - self._fetched < METADATA_SECONDS
            if self._metadata is not None and fresh and not refresh:
                return self._metadata
            data = self._get_json(f"{self.issuer}/.well-known/openid-configuration")
            if str(data.get("issuer", "")).rstrip("/") != self.issuer:
                raise ProviderUnavailable(
                    f"The provider's discovery document names the issuer "
                    f"{data.get('issuer')!r}, not {self.issuer!r}: check TELLER_OIDC_ISSUER."
                )
            missing = [
                k for k in ("authorization_endpoint", "token_endpoint", "jwks_uri") if k not in data
            ]
            if missing:
                raise ProviderUnavailable(
                    f"The provider's discovery document lacks {', '.join(missing)}."
                )
            self._metadata, self._keys, self._fetched = data, None, time.monotonic()
            return data

    def keys(self, *, refresh: bool = False) -> KeySet:
        metadata = self.metadata(refresh=refresh)
        with self._lock:
            if self._keys is None or refresh:
                try:
                    jwks: Any = self._get_json(metadata["jwks_uri"])  # checked by joserfc
                    self._keys = KeySet.import_key_set(jwks)
                except (JoseError, ValueError, TypeError, KeyError):
                    raise ProviderUnavailable(
                        "The provider's signing keys cannot be read."
                    ) from None
            return self._keys

    # ---- the flow -------------------------------------------------------------------------

    def _client(self, redirect_uri: str) -> OAuth2Client:
        metadata = self.metadata()
        methods = metadata.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        if not self.settings.oidc_client_secret:
            method = "none"
        elif "client_secret_basic" in methods:
            method = "client_secret_basic"
        else:
            method = "client_secret_post"
        return OAuth2Client(
            client_id=self.settings.oidc_client_id,
            client_secret=self.settings.oidc_client_secret or None,
            token_endpoint_auth_method=method,
            scope=self.settings.oidc_scopes,
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            timeout=self.settings.oidc_timeout_seconds,
        )

    def begin(self, *, session: Session, redirect_uri: str, next_url: str) -> Begun:
        """Store a new sign-in request and return the provider URL to send the browser to.

        Raises:
            ProviderUnavailable: the discovery document cannot be had.
        """
        metadata = self.metadata()
        cookie = secrets.token_urlsafe(32)
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        now = utcnow()
        store.add_sign_in_request(
            session=session,
            request_id=_digest(cookie),
            state=state,
            nonce=nonce,
            code_verifier=verifier,
            next_url=next_url,
            now=now,
            expires_at=now + timedelta(minutes=SIGN_IN_MINUTES),
        )
        with self._client(redirect_uri) as client:
            url, _ = client.create_authorization_url(
                metadata["authorization_endpoint"],
                state=state,
                code_verifier=verifier,
                nonce=nonce,
            )
        return Begun(url, cookie)

    def finish(
        self,
        *,
        session: Session,
        cookie: str | None,
        state: str,
        code: str,
        redirect_uri: str,
    ) -> tuple[OidcIdentity, str]:
        """Check the callback, exchange the code, validate the ID token.

        Returns the identity and the page to go to next.

        Raises:
            OidcError: no sign-in under way in this browser, a wrong `state`, an expired
                request, a refused code, or an ID token that fails any check.
            ProviderUnavailable: the provider could not be reached.
        """
        # Single use, whatever happens next.
        pending = (
            store.take_sign_in_request(session=session, request_id=_digest(cookie))
            if cookie
            else None
        )
        if pending is None:
            raise OidcError(
                "No sign-in was started in this browser, or it was already used: start again."
            )
        if not hmac.compare_digest(pending.state.encode(), state.encode()):
            raise OidcError("The sign-in answer does not match this browser's request (state).")
        if pending.expires_at < utcnow():
            raise OidcError(f"The sign-in took longer than {SIGN_IN_MINUTES} minutes: start again.")
        token = self._exchange(code, pending.code_verifier, redirect_uri)
        raw = token.get("id_token")
        if not raw:
            raise OidcError("The provider sent no ID token: check that the scope includes openid.")
        claims = self.validate_id_token(
            raw, nonce=pending.nonce, access_token=token.get("access_token")
        )
        claims = {**self._userinfo(token), **claims}
        return self._identity(claims), pending.next_url

    def _exchange(self, code: str, verifier: str, redirect_uri: str) -> dict[str, Any]:
        metadata = self.metadata()
        try:
            with self._client(redirect_uri) as client:
                return dict(
                    client.fetch_token(
                        metadata["token_endpoint"],
                        grant_type="authorization_code",
                        code=code,
                        code_verifier=verifier,
                        redirect_uri=redirect_uri,
                    )
                )
        except httpx.TransportError:
            raise ProviderUnavailable(
                f"The sign-in provider at {self.issuer} cannot be reached."
            ) from None
        except Exception as exc:  # noqa: BLE001 - authlib's OAuth errors: the provider said no
            raise OidcError(f"The provider refused the sign-in code ({exc}).") from None

    def validate_id_token(
        self, raw: str, *, nonce: str, access_token: str | None = None, now: float | None = None
    ) -> dict[str, Any]:
        """The ID token's claims, once every check passed.

        Raises:
            OidcError: bad signature or algorithm, unknown key, wrong issuer or audience,
                expired or not yet valid, or a `nonce` other than this sign-in's.
        """
        try:
            decoded = self._decode(raw, refresh=False)
        except JoseError as exc:
            if "key" not in str(exc).lower() and type(exc).__name__ != "MissingKeyError":
                raise OidcError(f"The ID token is not valid: {_why(exc)}.") from None
            try:  # an unknown key id: the provider may have rotated its keys
                decoded = self._decode(raw, refresh=True)
            except JoseError as again:
                raise OidcError(f"The ID token is not valid: {_why(again)}.") from None
        options = {
            "iss": {"essential": True, "value": self.issuer},
            "aud": {"essential": True, "value": self.settings.oidc_client_id},
            "exp": {"essential": True},
            "nonce": {"essential": True, "value": nonce},
        }
        params = {"nonce": nonce, "client_id": self.settings.oidc_client_id}
        if access_token:
            params["access_token"] = access_token
        claims = CodeIDToken(decoded.claims, decoded.header, options, params)
        try:
            claims.validate(now=int(now if now is not None else time.time()), leeway=LEEWAY_SECONDS)
        except JoseError as exc:
            raise OidcError(f"The ID token is not valid: {_why(exc)}.") from None
        return dict(claims)

    def _decode(self, raw: str, *, refresh: bool) -> Any:
        return jwt.decode(raw, self.keys(refresh=refresh), algorithms=list(ALGORITHMS))

    def _userinfo(self, token: dict[str, Any]) -> dict[str, Any]:
        """Claims from the userinfo endpoint (some providers keep groups there); the ID
        token's claims win over these."""
        endpoint = self.metadata().get("userinfo_endpoint")
        if not endpoint or not token.get("access_token"):
            return {}
        try:
            response = httpx.get(
                endpoint,
                headers={"Authorization": f"Bearer {token['access_token']}"},
                timeout=self.settings.oidc_timeout_seconds,
            )
            data = response.json() if response.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _identity(self, claims: dict[str, Any]) -> OidcIdentity:
        raw_groups = claims.get(self.settings.oidc_groups_claim) or []
        if isinstance(raw_groups, str):
            raw_groups = [raw_groups]
        groups = sorted({str(g) for g in raw_groups if isinstance(g, str | int)})
        username = claims.get(self.settings.oidc_username_claim) or claims.get("email") or ""
        return OidcIdentity(
            subject=f"{self.issuer}|{claims['sub']}",
            username=str(username) or str(claims["sub"]),
            email=claims.get("email"),
            groups=groups,
            claims=claims,
        )


def _why(exc: Exception) -> str:
    """joserfc's error, as a short reason ("expired_token: The token is expired")."""
    name = getattr(exc, "error", type(exc).__name__)
    description = getattr(exc, "description", "") or str(exc)
    return f"{name}: {description}" if description and description != name else str(name)
