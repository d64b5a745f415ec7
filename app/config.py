"""The one settings object: read from `TELLER_*` environment variables (and `.env`) once."""

from __future__ import annotations

import ipaddress
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_DIRNAME = "SmolLM2-135M-Instruct"


def _secure_or_local(url: str, secure_scheme: str) -> bool:
    """`url` uses `secure_scheme`, or points at this machine (tests, a local provider)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    local = parts.hostname in ("localhost", "127.0.0.1", "::1")
    return parts.scheme == secure_scheme or (local and parts.scheme in ("http", "ldap"))


class Settings(BaseSettings):
    """Everything an operator can set. Paths are resolved against the working directory."""

    model_config = SettingsConfigDict(env_prefix="TELLER_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    data_dir: Path = Path("data")
    """Database and session files."""
    models_dir: Path = Path("models")
    """Base-model cache and the adapter store."""
    database_url: str = ""
    """Any SQLAlchemy URL; empty means SQLite at `data_dir/teller.db`."""

    base_model: str = ""
    """Hub id, local folder or `.gguf` file; empty means the embedded default under `models_dir`."""
    adapter: str = ""
    """A LoRA adapter folder to attach at start (the registry manages adapters later)."""
    adapter_max_rank: int = Field(64, ge=1)
    """Uploaded adapters with a larger LoRA rank are refused."""
    adapter_max_archive_bytes: int = Field(2 << 30, ge=1)
    """Largest adapter upload (zip or folder), in bytes."""
    adapter_max_file_bytes: int = Field(2 << 30, ge=1)
    """Largest single file in an adapter package, in bytes."""
    adapter_max_loaded: int = Field(8, ge=1)
    """Adapters kept loaded at once; the least recently used idle ones are unloaded first."""
    engine: Literal["local", "remote"] = "local"
    engine_process: Literal["auto", "on", "off"] = "auto"
    """Run a local engine in a process of its own beside the web server (`on`), in the
    server's process (`off`), or `auto`: its own process where the model runs on CUDA."""
    remote_url: str = ""
    """OpenAI-compatible upstream for `engine=remote` (vLLM or another Teller), e.g.
    `http://gpu-host:8000` (see docs/remote-engine.md)."""
    remote_api_key: str = ""
    """Bearer key the upstream wants (another Teller's API key; vLLM's `--api-key`)."""
    remote_model: str = ""
    """The upstream's base model id; empty asks its `/v1/models` at start."""
    remote_model_map: str = ""
    """`NAME[@VERSION]=MODEL,...`: upstream model ids for adapters it serves as its own
    models (merged checkpoints); unmapped adapters are pushed to vLLM or used by name."""
    remote_adapter_root: str = ""
    """Where the upstream sees this server's adapter store (`models_dir/adapters`), when
    pushing adapters to vLLM from another machine; empty means the same path."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    quantization: Literal["nf4", "8bit", "none"] = "nf4"
    """Applies on CUDA only; on CPU the model runs unquantized."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    allow_hub_downloads: bool = False
    """Teller never contacts a model hub unless this is set."""

    max_new_tokens: int = Field(512, ge=1, le=8192)
    """Upper bound on answer length; requests may ask for less, never more."""
    max_input_chars: int = Field(32_000, ge=1)
    """A user message longer than this is refused with a clear message; on `/v1` it bounds
    all messages of a request together, each counted with a fixed overhead."""
    max_messages: int = Field(256, ge=1)
    """Messages one `/v1` request may carry (more get 400); chat sends at most this many turns."""
    max_request_bytes: int = Field(1 << 20, ge=1024)
    """Largest request body (adapter uploads excepted: they have their own limit); a larger
    one gets 413 before the server reads it."""
    max_context_tokens: int = Field(2048, ge=64)
    """History is trimmed from the oldest turns to fit this many prompt tokens."""
    calculations_per_answer: int = Field(8, ge=0, le=64)
    """Calculations (`<<calc: ...>>`) Teller computes in one answer (docs/calculator.md); each
    one is a stop and a continuation. 0 turns the calculator off."""
    default_temperature: float = Field(0.7, ge=0.0, le=2.0)
    default_top_p: float = Field(0.95, gt=0.0, le=1.0)
    system_prompt: str = (
        "You are Teller, a careful assistant for finance professionals. "
        "Answer precisely, show calculations step by step, and say when you are unsure."
    )
    scheduler: Literal["auto", "batch", "sequential"] = "auto"
    """`batch`: continuous batching, many answers share each forward step (Falcon-family
    models); `sequential`: one answer at a time; `auto`: batch on CUDA where the model allows."""
    max_batch: int = Field(32, ge=1, le=256)
    """Answers generated together by the batch scheduler (KV cache slots on the GPU)."""
    max_queue: int = Field(64, ge=1)
    """Requests waiting for the model; beyond this they get 503 with Retry-After."""
    cpu_threads: int = Field(0, ge=0)
    """Torch intra-op threads on CPU; 0 lets Teller pick (all physical cores)."""
    nf4_kernels: Literal["auto", "hybrid", "mma", "bnb_flat", "bnb"] = "auto"
    """Which kernels run NF4 projections in the batch scheduler on CUDA
    (`app.engine.kernels.nf4_routing`). `auto`: the fastest measured routing whose repacked
    copies fit the card; `mma`: the tensor-core kernels for every decode row count (one copy;
    not yet measured on a card, so opt-in); `bnb_flat`, `bnb`: bitsandbytes only."""
    cpu_int4: Literal["auto", "always", "off"] = "auto"
    """Int4 weights on the lean CPU path (Llama family, sequential engine). `auto`: where the
    model came from a 4-bit file (its weights on 16 levels per group of 32, as the embedded
    default's Q4_1), with `dtype=auto`; nothing lost but bf16 scales. `always`: any model,
    rounded to 4 bits as a Q4_1 file would be (lossy). `off`: never."""

    # Accounts, limits and retention (app/auth, app/audit).
    session_hours: int = Field(12, ge=1, le=24 * 90)
    """A sign-in lasts this long without activity; each request extends it."""
    cookie_secure: bool | None = None
    """Send cookies only over HTTPS; None decides per request (https → secure)."""
    trusted_proxies: str = ""
    """Comma-separated addresses or networks (CIDR) of reverse proxies whose X-Forwarded-For
    and X-Forwarded-Proto are believed; empty believes no one, so no client (a local process
    included) can pose as another address or as https."""
    login_max_failures: int = Field(5, ge=1)
    login_window_minutes: int = Field(15, ge=1)
    """After `login_max_failures` failed sign-ins for one name (or 4x that from one address)
    within this window, sign-in is refused until the window passes."""
    messages_per_minute: int = Field(20, ge=1)
    """Per-user rate of new messages (chat and API); more gets 429 with Retry-After."""
    max_concurrent_streams: int = Field(2, ge=1)
    """Answers one user may have generating at once."""
    retention_days: int = Field(0, ge=0)
    """Conversations untouched this long are deleted (at start and daily); 0 keeps them."""
    audit_retention_days: int = Field(0, ge=0)
    """Audit records older than this are purged, the chain re-anchored; 0 keeps them."""
    audit_head_log: str = ""
    """File the server appends `TIME ID:HASH` of the audit head to (at start, every
    `audit_head_every_minutes`, at shutdown) for shipping elsewhere; verification checks it.
    Empty: the head goes to the log only (`audit head ID:HASH` at INFO)."""
    audit_head_every_minutes: int = Field(15, ge=1, le=24 * 60)
    """How often the audit head is logged (and appended to `audit_head_log`)."""

    # Operations (app/ops).
    log_format: Literal["json", "text"] = "json"
    """`json`: one object per line with a request id, for log shippers; `text` for a terminal."""
    log_prompts: bool = False
    """Put prompt and answer text in the logs (never by default: they may hold client data)."""
    shutdown_grace_seconds: float = Field(10.0, ge=0, le=600)
    """On SIGTERM, running answers get this long to stop and be stored before the exit."""

    # The improvement loop (app/improve, docs/improvement-loop.md).
    improve_eval_data: Path | None = None
    """Fixed finance set the evaluation gate scores every new version on (Alpaca JSONL);
    empty means the bundled training/sample_data/finance_eval.jsonl."""
    improve_eval_limit: int = Field(20, ge=1, le=10_000)
    """Records the gate scores per set (held-out split and finance set), per version."""
    improve_eval_max_new_tokens: int = Field(48, ge=1, le=4096)
    """Tokens the gate generates per answer it checks or shows (numeric accuracy, samples)."""

    # Company knowledge (app/knowledge, docs/knowledge.md).
    knowledge_max_file_bytes: int = Field(50 << 20, ge=1)
    """Largest document one may upload; a larger one is refused with this setting named."""
    knowledge_max_upload_files: int = Field(20, ge=1, le=1000)
    """Files one upload (a form post) may carry."""
    knowledge_max_expanded_bytes: int = Field(200 << 20, ge=1)
    """A DOCX or XLSX (a zip package) that would unpack to more is refused as a zip bomb."""
    knowledge_max_pages: int = Field(5000, ge=1)
    """PDFs with more pages are refused."""
    knowledge_max_sheet_rows: int = Field(100_000, ge=1)
    """Rows read per spreadsheet sheet (and CSV file); the rest is left out with a note."""
    knowledge_chunk_chars: int = Field(1200, ge=200, le=20_000)
    """Target passage length in characters; tables are kept whole up to 4x this."""
    knowledge_top_k: int = Field(5, ge=1, le=50)
    """Passages given to the model for each question."""
    embedding_model: str = ""
    """A sentence-transformers model folder for dense retrieval fused with BM25 (needs the
    `sentence-transformers` package); empty searches with BM25 alone."""

    # Company identity (app/auth/oidc.py, app/auth/ldap.py, docs/identity.md).
    local_accounts: bool = True
    """Sign-in with Teller's own user names and passwords; off leaves OIDC and LDAP only."""
    oidc_issuer: str = ""
    """OpenID Connect issuer URL (discovery at ISSUER/.well-known/openid-configuration);
    empty: no OIDC sign-in. https, except on this machine."""
    oidc_client_id: str = ""
    oidc_client_secret: str = ""
    oidc_scopes: str = "openid profile email"
    oidc_groups_claim: str = "groups"
    """ID token (or userinfo) claim listing the user's groups at the provider."""
    oidc_username_claim: str = "preferred_username"
    """Claim that names a new account (`sub` when it is missing or unusable)."""
    oidc_admin_group: str = ""
    """Provider group whose members are Teller administrators (checked at each sign-in);
    empty: roles are set in Teller only."""
    oidc_display_name: str = "company account"
    """Shown on the sign-in button: "Sign in with ..."."""
    oidc_redirect_url: str = ""
    """The callback URL registered at the provider; empty: this server's
    `/login/oidc/callback` as the browser reached it."""
    oidc_timeout_seconds: float = Field(10.0, gt=0, le=120)
    ldap_url: str = ""
    """`ldap://host:389` or `ldaps://host:636`; empty: no LDAP sign-in."""
    ldap_bind_dn: str = ""
    """How a user binds, `{username}` filled in (escaped): `uid={username},ou=people,
    dc=example,dc=org`, or `{username}@corp.example.com` for Active Directory."""
    ldap_base_dn: str = ""
    """Where the user's entry and the groups are searched."""
    ldap_user_filter: str = "(uid={username})"
    """Finds the user's entry (`(sAMAccountName={username})` for Active Directory)."""
    ldap_group_filter: str = "(member={user_dn})"
    """Finds the user's groups (their `cn` is the group name; `{username}` works too, for
    `memberUid`); empty: the user entry's `memberOf` (Active Directory)."""
    ldap_admin_group: str = ""
    """LDAP group (cn) whose members are Teller administrators; empty: roles set in Teller."""
    ldap_start_tls: bool = False
    """Upgrade `ldap://` with StartTLS (needed for a server not on this machine)."""
    ldap_ca_file: str = ""
    """CA certificate file to check the LDAP server's certificate; empty: the system's."""
    ldap_timeout_seconds: float = Field(5.0, gt=0, le=120)

    @field_validator("oidc_issuer")
    @classmethod
    def _issuer_is_https(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not _secure_or_local(value, "https"):
            raise ValueError(
                f"TELLER_OIDC_ISSUER: {value!r} must be an https:// URL (plain http only for "
                "a provider on this machine)"
            )
        return value

    @field_validator("ldap_bind_dn", "ldap_user_filter")
    @classmethod
    def _names_the_user(cls, value: str) -> str:
        if value and "{username}" not in value:
            raise ValueError(
                "TELLER_LDAP_BIND_DN and TELLER_LDAP_USER_FILTER must contain {username}"
            )
        return value

    @model_validator(mode="after")
    def _identity_is_complete(self) -> Settings:
        if self.oidc_issuer and not self.oidc_client_id:
            raise ValueError("TELLER_OIDC_ISSUER needs TELLER_OIDC_CLIENT_ID")
        if self.ldap_url:
            if not self.ldap_bind_dn:
                raise ValueError("TELLER_LDAP_URL needs TELLER_LDAP_BIND_DN")
            if not (self.ldap_start_tls or _secure_or_local(self.ldap_url, "ldaps")):
                raise ValueError(
                    f"TELLER_LDAP_URL: {self.ldap_url!r} would send passwords in clear; use "
                    "ldaps:// or set TELLER_LDAP_START_TLS=true (plain ldap:// only on this "
                    "machine)"
                )
        return self

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, value: str) -> str:
        items = [item.strip() for item in value.split(",") if item.strip()]
        for item in items:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"TELLER_TRUSTED_PROXIES: {item!r} is not an IP address or network; "
                    "list them comma-separated, e.g. 10.0.0.5,172.16.0.0/12"
                ) from None
        return ",".join(items)

    @model_validator(mode="after")
    def _remote_needs_url(self) -> Settings:
        if self.engine == "remote" and not self.remote_url:
            raise ValueError("TELLER_ENGINE=remote needs TELLER_REMOTE_URL")
        return self

    @cached_property
    def default_model_dir(self) -> Path:
        return self.models_dir / DEFAULT_MODEL_DIRNAME

    @property
    def resolved_base_model(self) -> str:
        return self.base_model or str(self.default_model_dir)

    @property
    def resolved_database_url(self) -> str:
        # SQLAlchemy decodes %XX in the path: escape `%` so `50%off/` stays that folder.
        path = (self.data_dir / "teller.db").as_posix().replace("%", "%25")
        return self.database_url or f"sqlite:///{path}"
