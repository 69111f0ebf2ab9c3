"""`jwt` (kairos-rs: secret/issuer/audience/required_claims; Kairos adds keys and algorithms).

``jwks_url`` fetches the RS/ES signing keys from a JWKS document (see kairos/auth/jwks.py):
``jwks_refresh_secs`` is the refresh period when the answer has no ``Cache-Control: max-age``,
``jwks_min_refresh_secs`` the least time between two refreshes caused by unknown ``kid`` values,
``jwks_timeout_secs`` the fetch timeout (also the longest a request waits for a refresh).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from kairos.config.base import ConfigModel, Float, Int, NonNegativeInt, Str

Algorithm = Literal[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"
]
_KAIROS_RS_DEFAULT_SECRET = "please-change-this-secret"


class JwtConfig(ConfigModel):
    """How bearer tokens (`Authorization: Bearer <token>`) are verified, for routes with
    `auth_required`. At least one of `secret`, `public_key` or `jwks_url`; each algorithm needs its
    key (`HS*` a `secret`, the others a `public_key` or `jwks_url`). A valid token's `sub` and `roles`
    become the request's identity. Failures get 401 `authentication_error` with `WWW-Authenticate`."""

    secret: Str | None = Field(
        None,
        description="HMAC key for HS256/384/512, at least 32 characters (not kairos-rs's sample value); use "
        "`${JWT_SECRET}`. The top-level `jwt_secret` is an alias.",
    )
    public_key: Str | None = Field(
        None,
        description="PEM public key for RS256/384/512, ES256/384/512 and PS256/384/512 (PS: RSASSA-PSS, "
        "salt length = hash size).",
    )
    jwks_url: Str | None = Field(
        None,
        description="`http(s)://` URL of a JWKS document: RS/PS/ES keys looked up by the token's `kid`, "
        "fetched in the background and refreshed; an unknown `kid` triggers one bounded refresh.",
    )
    jwks_refresh_secs: Int = Field(
        300,
        ge=5,
        le=86_400,
        description="Seconds between two JWKS refreshes when the answer has no `Cache-Control: max-age` (a "
        "`max-age` is honoured within 60 s - 24 h).",
    )
    jwks_min_refresh_secs: Int = Field(
        30,
        ge=1,
        le=3_600,
        description="Least time in seconds between two refreshes caused by unknown `kid`s; in between, such "
        "tokens are refused at once.",
    )
    jwks_timeout_secs: Float = Field(
        5.0,
        gt=0,
        le=60,
        description="JWKS fetch timeout in seconds, also the longest a request waits for a refresh.",
    )
    algorithms: tuple[Algorithm, ...] | None = Field(
        None,
        description="Allow-list of token algorithms; a token whose `alg` is not in it (and `none`, always) "
        "is rejected. Unset: `HS256` with a `secret`, else `RS256`.",
    )
    issuer: Str | None = Field(None, description="Required `iss` claim. Unset: not checked.")
    audience: Str | tuple[Str, ...] | None = Field(
        None,
        description="Accepted `aud` value(s): the token's `aud` (a string or a list) must name one. Unset: "
        "not checked.",
    )
    required_claims: tuple[Str, ...] = Field(
        (), description="Claims every token must carry (`iat` is never required)."
    )
    leeway_secs: NonNegativeInt = Field(
        30, le=600, description="Clock skew allowed on `exp` and `nbf`, in seconds (at most 600)."
    )

    @field_validator("secret")
    @classmethod
    def _strong_secret(cls, secret: str | None) -> str | None:
        if secret is None:
            return None
        if not secret.strip():
            raise ValueError("cannot be empty")
        if secret == _KAIROS_RS_DEFAULT_SECRET:
            raise ValueError("must be changed from the default value")
        if len(secret) < 32:
            raise ValueError(f"must be at least 32 characters (has {len(secret)})")
        return secret

    @field_validator("jwks_url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return url

    @model_validator(mode="after")
    def _keys_match_algorithms(self) -> JwtConfig:
        if self.secret is None and self.public_key is None and self.jwks_url is None:
            raise ValueError("one of secret, public_key or jwks_url is required")
        for algorithm in self.effective_algorithms:
            if algorithm.startswith("HS") and self.secret is None:
                raise ValueError(f"algorithm {algorithm} needs `secret`")
            if not algorithm.startswith("HS") and self.public_key is None and self.jwks_url is None:
                raise ValueError(f"algorithm {algorithm} needs `public_key` or `jwks_url`")
        return self

    @property
    def effective_algorithms(self) -> tuple[str, ...]:
        if self.algorithms:
            return self.algorithms
        return ("HS256",) if self.secret is not None else ("RS256",)
