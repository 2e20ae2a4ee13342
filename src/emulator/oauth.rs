//! OAuth: the token and revoke endpoints, and the credential checks of every other endpoint.
//!
//! Tokens are as strict as the real service's: an access token expires; a refresh token is used
//! once (refreshing starts a new generation of the session, which kills the previous pair); a
//! revoked token ends its whole session. The token endpoint takes JWT and refresh grants with
//! the client's Basic credentials; the other endpoints check a Bearer token ([`State::authorize`],
//! or the media host's `access_token` query parameter).

// Handlers answer `Result<_, Response>`: the error *is* the HTTP answer (a RingCentral error body),
// and the emulator is not a hot path where the size of `Err` matters.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{RawQuery, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::json;

use super::audio::mix64;
use super::data::OWNER_EXTENSION_ID;
use super::reply::{json_response, oauth_error, rc_error};
use super::state::{Group, Shared, State, Token, TokenKind, Tokens, lock};

impl State {
    fn new_token(&self, kind: TokenKind) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let a = mix64(self.nonce ^ n);
        let b = mix64(a ^ self.nonce.rotate_left(17));
        let prefix = match kind {
            TokenKind::Access => "U0pDMDFQMDFBQ0Mw",
            TokenKind::Refresh => "U0pDMDFQMDFSRUYw",
        };
        format!("{prefix}{a:016x}{b:016x}")
    }

    /// Issues a new token pair for `session` (the session's current generation).
    fn issue(
        &self,
        tokens: &mut Tokens,
        session: u64,
        access_ttl: Duration,
        refresh_ttl: Duration,
    ) -> serde_json::Value {
        let generation = tokens.sessions.entry(session).or_default().generation;
        let now = Instant::now();
        let access = self.new_token(TokenKind::Access);
        tokens.tokens.insert(
            access.clone(),
            Token {
                kind: TokenKind::Access,
                session,
                generation,
                expires: now + access_ttl,
            },
        );
        let mut body = json!({
            "access_token": access,
            "token_type": "bearer",
            "expires_in": access_ttl.as_secs(),
            "scope": "ReadAccounts ReadCallLog ReadCallRecording",
            "owner_id": OWNER_EXTENSION_ID,
            "endpoint_id": format!("emu{session}"),
            "session_id": format!("{}", 9_000_000 + session),
            "session_expires_in": refresh_ttl.as_secs().max(access_ttl.as_secs()),
            "session_idle_timeout": 3600,
        });
        if self.cfg.issue_refresh_tokens {
            let refresh = self.new_token(TokenKind::Refresh);
            tokens.tokens.insert(
                refresh.clone(),
                Token {
                    kind: TokenKind::Refresh,
                    session,
                    generation,
                    expires: now + refresh_ttl,
                },
            );
            body["refresh_token"] = json!(refresh);
            body["refresh_token_expires_in"] = json!(refresh_ttl.as_secs());
        }
        body
    }

    /// Checks a Bearer token (or the media host's `access_token` query parameter); tells the
    /// login session the token belongs to.
    pub(super) fn authorize(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<u64, Response> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let Some(token) = bearer.or(query_token) else {
            return Err(rc_error(
                StatusCode::UNAUTHORIZED,
                "OAU-123",
                "Authorization header is not specified",
            ));
        };
        let tokens = lock(&self.tokens);
        let invalid = || rc_error(StatusCode::UNAUTHORIZED, "OAU-149", "Invalid token");
        let Some(t) = tokens.tokens.get(token) else {
            return Err(invalid());
        };
        if t.kind != TokenKind::Access {
            return Err(invalid());
        }
        let session = tokens.sessions.get(&t.session);
        if session.is_none_or(|s| s.revoked) {
            return Err(rc_error(
                StatusCode::UNAUTHORIZED,
                "OAU-213",
                "Token is revoked",
            ));
        }
        if session.is_some_and(|s| s.generation != t.generation) {
            return Err(rc_error(
                StatusCode::UNAUTHORIZED,
                "OAU-213",
                "Token not found",
            ));
        }
        if Instant::now() >= t.expires {
            return Err(rc_error(
                StatusCode::UNAUTHORIZED,
                "OAU-213",
                "Token expired",
            ));
        }
        Ok(t.session)
    }

    /// Basic client credentials of the OAuth endpoints.
    fn client_ok(&self, headers: &HeaderMap) -> Result<(), Response> {
        let creds = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Basic ")
                    .or_else(|| v.strip_prefix("basic "))
            })
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok());
        let Some(creds) = creds else {
            return Err(oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "OAU-123",
                "Client authentication is required",
            ));
        };
        let (id, secret) = creds.split_once(':').unwrap_or((&creds, ""));
        if id != self.cfg.client_id || secret != self.cfg.client_secret {
            return Err(oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "OAU-153",
                "Invalid client",
            ));
        }
        Ok(())
    }
}

fn form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

pub(super) async fn token(
    AxState(st): AxState<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    st.gated("token", Group::Auth, || {
        if let Err(r) = st.client_ok(&headers) {
            return r;
        }
        let form = form(&body);
        let ttl = |key: &str, default: Duration, lo: u64, hi: u64| -> Duration {
            form.get(key)
                .and_then(|v| v.parse::<u64>().ok())
                .map(|v| Duration::from_secs(v.clamp(lo, hi)).min(default))
                .unwrap_or(default)
        };
        let access_ttl = ttl("access_token_ttl", st.cfg.access_ttl, 600, 3600);
        let refresh_ttl = ttl("refresh_token_ttl", st.cfg.refresh_ttl, 3600, 2_592_000);
        let grant = form.get("grant_type").map(String::as_str).unwrap_or("");
        match grant {
            "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
                if form.get("assertion").map(String::as_str) != Some(st.cfg.jwt.as_str()) {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "OAU-140",
                        "Invalid JWT token",
                    );
                }
                let mut tokens = lock(&st.tokens);
                let session = tokens.next_session;
                tokens.next_session += 1;
                tracing::debug!(session, "jwt login");
                json_response(
                    StatusCode::OK,
                    &st.issue(&mut tokens, session, access_ttl, refresh_ttl),
                )
            }
            "refresh_token" => {
                let presented = form.get("refresh_token").map(String::as_str).unwrap_or("");
                let mut tokens = lock(&st.tokens);
                let invalid =
                    |d| oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "OAU-211", d);
                let Some(t) = tokens
                    .tokens
                    .get(presented)
                    .filter(|t| t.kind == TokenKind::Refresh)
                else {
                    return invalid("Invalid token");
                };
                let (session, generation, expires) = (t.session, t.generation, t.expires);
                let s = tokens.sessions.entry(session).or_default();
                if s.revoked || s.generation != generation {
                    return invalid("Token is revoked");
                }
                if Instant::now() >= expires {
                    return invalid("Token is expired");
                }
                // Single use: the new generation kills this refresh token and its access token.
                s.generation += 1;
                tracing::debug!(session, "refresh");
                json_response(
                    StatusCode::OK,
                    &st.issue(&mut tokens, session, access_ttl, refresh_ttl),
                )
            }
            "" => oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "OAU-101",
                "Parameter [grant_type] is invalid",
            ),
            _ => oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "OAU-250",
                "Unsupported grant type",
            ),
        }
    })
}

pub(super) async fn revoke(
    AxState(st): AxState<Shared>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    st.gated("revoke", Group::Auth, || {
        if let Err(r) = st.client_ok(&headers) {
            return r;
        }
        let mut form = form(&body);
        if let Some(q) = q {
            form.extend(url::form_urlencoded::parse(q.as_bytes()).into_owned());
        }
        let Some(token) = form.get("token") else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "OAU-101",
                "Parameter [token] is invalid",
            );
        };
        let mut tokens = lock(&st.tokens);
        if let Some(session) = tokens.tokens.get(token).map(|t| t.session) {
            tokens.sessions.entry(session).or_default().revoked = true;
            tracing::debug!(session, "revoked");
        }
        StatusCode::OK.into_response()
    })
}
