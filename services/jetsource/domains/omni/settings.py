"""Settings of the omni domain (``JETSOURCE_OMNI__...``), shared by the ingress, the
projector's read models and the CLI: where raw payloads and handle claims live."""

from __future__ import annotations

import re

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from jetsource.core.clock import MAX_AGE_S
from jetsource.core.printable import blank


class OmniOptions(BaseModel):
    # The normalized events' stream and subjects; empty: OMNI_EVENTS / omni.events (the
    # descriptor's). Tests and side-by-side deployments move them; the projector must
    # then be given the same domain (descriptor.omni_domain).
    events_stream: str = ""
    events_subject_prefix: str = ""
    # The raw payload archive: every request body as received, rejected ones too.
    raw_stream: str = "OMNI_RAW"
    raw_subject_prefix: str = "omni.raw"
    # How long raw payloads are kept; 0 keeps everything (the users' decision).
    # JetStream takes no age under 0.1 s.
    raw_max_age_s: float = Field(default=0.0, ge=0, le=MAX_AGE_S)  # 292 years: int64 ns
    # Bodies are archived whole up to the ingress's max_body_bytes, so this bounds it.
    raw_max_msg_size: int = Field(default=6 * 1024 * 1024, gt=0)
    raw_replicas: int = Field(default=1, ge=1, le=5)
    # NATS KV bucket: handle ("provider.<base64 id>") -> identity id; create() claims.
    identity_bucket: str = "OMNI_HANDLES"
    # Handles kept in each process's memory (kept current by watching the bucket).
    identity_cache_size: int = Field(default=200_000, ge=0)
    # Every service that follows the stream settles a link or merge into the bucket
    # only once it is this old, and not at all when the bucket's own update (watched)
    # showed its writer finished it meanwhile: the writer's own bucket write follows its
    # append by a round trip, so each follower re-reading the handle at once doubled
    # the bucket's work per first contact. A writer stopped between the two is still
    # finished by the followers, this much later. 0 settles every one at once.
    identity_settle_delay_s: float = Field(default=1.0, ge=0, le=60)

    @field_validator("raw_max_age_s")
    @classmethod
    def _raw_age(cls, value: float) -> float:
        if 0 < value < 0.1:
            raise ValueError("raw_max_age_s is 0 (keep everything) or at least 0.1 seconds")
        return value


class OmniDomainSettings(BaseSettings):
    """``JETSOURCE_OMNI__...`` alone, for the domain registry: every process that
    loads it (the projector, the CLI) takes the stream and subjects the ingress was
    given, or reads OMNI_EVENTS while the ingress writes elsewhere."""

    model_config = SettingsConfigDict(
        env_prefix="JETSOURCE_", env_nested_delimiter="__", extra="ignore"
    )
    omni: OmniOptions = OmniOptions()


# An instance's name: a path segment of its webhook URL and a part of the read model's
# keys (``c:<provider>:<instance>:<conversation>``), so never a ``:``.
INSTANCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# A Discord application's Ed25519 public key, as hex.
PUBLIC_KEY = re.compile(r"[0-9a-f]{64}")


class InstanceConfig(BaseModel):
    """One account or bot whose webhooks the ingress accepts on
    ``/webhooks/<provider>/<name>``, and how its requests are signed:

    - ``whatsapp`` + ``cloud``: ``X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body
      with app_secret>``; ``verify_token`` answers Meta's GET verification handshake;
    - ``whatsapp`` + ``evolution``: the ``apikey`` header equals ``api_key``;
    - ``discord`` + ``forwarder``: ``X-Jetsource-Signature: sha256=<HMAC-SHA256 of the
      body with shared_secret>`` (what the forwarding bot sends);
    - ``discord`` + ``interactions``: Discord's own HTTP delivery (the application's
      Interactions Endpoint URL): ``X-Signature-Ed25519`` (hex) over
      ``X-Signature-Timestamp`` + the body, checked with ``public_key`` (the application's
      Ed25519 public key, 64 hex digits, from the Developer Portal's General Information).
      ``interaction_response`` says how a command, component or modal is answered:
      ``message`` (type 4, an ephemeral message of ``interaction_reply``) or ``deferred``
      (type 5 "thinking..." for commands and modals, type 6 for components, both
      ephemeral: the bot answers later with the interaction's token).
      ``timestamp_tolerance_s``: a request whose timestamp is further than this from
      the ingress's clock is refused (a replayed request); 0 does not check.
    """

    provider: str = Field(pattern="^(whatsapp|discord)$")
    format: str = Field(pattern="^(cloud|evolution|forwarder|interactions)$")
    app_secret: SecretStr | None = None
    verify_token: SecretStr | None = None
    api_key: SecretStr | None = None
    shared_secret: SecretStr | None = None
    public_key: str | None = None
    interaction_response: str = Field(default="message", pattern="^(message|deferred)$")
    interaction_reply: str = Field(default="Received.", min_length=1, max_length=2000)
    timestamp_tolerance_s: float = Field(default=300.0, ge=0, le=86400)

    @field_validator("app_secret", "verify_token", "api_key", "shared_secret")
    @classmethod
    def _secret_given(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        """A secret that is empty or only spaces (an unset variable in a template) was
        taken: an HMAC keyed with it is one anybody can compute, so an ``app_secret`` or
        ``shared_secret`` of "" let any request through as signed. An ``api_key`` with
        spaces at either end matched no request (a server strips header values)."""
        if value is None:
            return None
        secret = value.get_secret_value()
        if blank(secret):
            # Only whitespace or invisible characters (a zero-width space, a BOM, a
            # Hangul filler: core.printable.blank; str.strip() took them): one pasted
            # from a page with nothing visible copied is no secret either.
            raise ValueError(
                f"{info.field_name} is empty (an unset variable?), or shows nothing: only "
                "whitespace or invisible characters"
            )
        if info.field_name == "api_key" and secret != secret.strip():
            raise ValueError(
                "api_key begins or ends with whitespace: the apikey header arrives "
                "without it, so no request would match"
            )
        return value

    @field_validator("public_key")
    @classmethod
    def _public_key(cls, value: str | None) -> str | None:
        """The application's Ed25519 public key as Discord's Developer Portal shows it:
        64 hex digits (32 bytes). Checked here, so that a key that cannot verify
        anything stops the ingress at its start instead of refusing every request."""
        if value is None:
            return None
        key = value.strip().lower()
        if not PUBLIC_KEY.fullmatch(key):
            raise ValueError(
                "public_key must be the Discord application's Ed25519 public key: 64 hex "
                f"digits (Developer Portal, General Information), not {value[:80]!r}"
            )
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(key))
        except ValueError as exc:
            raise ValueError(f"public_key is not an Ed25519 public key: {exc}") from None
        return key

    @model_validator(mode="after")
    def _secrets(self) -> InstanceConfig:
        needs = {
            "cloud": "app_secret",
            "evolution": "api_key",
            "forwarder": "shared_secret",
            "interactions": "public_key",
        }
        need = needs[self.format]
        if getattr(self, need) is None:
            raise ValueError(f"format {self.format!r} needs {need}")
        allowed = {"whatsapp": ("cloud", "evolution"), "discord": ("forwarder", "interactions")}
        if self.format not in allowed[self.provider]:
            raise ValueError(f"provider {self.provider!r} has no format {self.format!r}")
        return self
