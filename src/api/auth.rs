//! Tokens: what a token answer means, when to renew, and the state file that keeps them across
//! restarts.
//!
//! The state file is JSON, mode 0600, written atomically (temporary file + rename). It maps
//! `"{server_url}#{client_id}"` to the tokens of that app on that server, plus a fingerprint of
//! the JWT so that a changed credential (another user) does not reuse the previous user's tokens.
//! A file that group or others can read is not trusted (its tokens may have leaked) and is
//! replaced at the next write. The renewal itself (single-flight, refresh or JWT login) lives in
//! `transport.rs`, because it sends its requests through the same request path; this file holds
//! the pure parts.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::credentials::Credentials;
use super::error::ApiError;

/// A token. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Renew this long before the access token expires: 60 s (as the JS SDK), but at most a fifth
/// of the token's lifetime so that short-lived tokens are not renewed on every request.
pub(crate) fn renew_early_ms(ttl_s: u64) -> i64 {
    (60_000i64).min((ttl_s as i64).saturating_mul(1000) / 5)
}

/// Tokens of one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tokens {
    pub access: Secret,
    /// Unix milliseconds.
    pub access_expires_at: i64,
    /// Lifetime the service gave the access token, seconds.
    pub access_ttl: u64,
    pub refresh: Option<Secret>,
    /// Unix milliseconds; `None` when the service did not say.
    pub refresh_expires_at: Option<i64>,
}

impl Tokens {
    /// Parses a token answer received at `now_ms`.
    pub fn from_response(v: &Value, now_ms: i64) -> Result<Tokens, String> {
        let access = v
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or("no access_token")?;
        let ttl = v
            .get("expires_in")
            .and_then(|e| {
                e.as_u64()
                    .or_else(|| e.as_str().and_then(|s| s.parse().ok()))
            })
            .ok_or("no expires_in")?;
        let refresh = v
            .get("refresh_token")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let refresh_ttl = v.get("refresh_token_expires_in").and_then(|e| {
            e.as_u64()
                .or_else(|| e.as_str().and_then(|s| s.parse().ok()))
        });
        Ok(Tokens {
            access: Secret(access.to_owned()),
            access_expires_at: now_ms.saturating_add((ttl as i64).saturating_mul(1000)),
            access_ttl: ttl,
            refresh: refresh.map(|r| Secret(r.to_owned())),
            refresh_expires_at: refresh
                .and(refresh_ttl)
                .map(|t| now_ms.saturating_add((t as i64).saturating_mul(1000))),
        })
    }

    /// The access token can be used without renewing first.
    pub fn access_fresh(&self, now_ms: i64) -> bool {
        now_ms + renew_early_ms(self.access_ttl) < self.access_expires_at
    }

    /// The refresh token, if there is one that has not expired (with 5 s to spare).
    pub fn usable_refresh(&self, now_ms: i64) -> Option<&Secret> {
        let r = self.refresh.as_ref()?;
        match self.refresh_expires_at {
            Some(at) if now_ms + 5_000 >= at => None,
            _ => Some(r),
        }
    }

    /// Forces a renewal before the next use (after a 401).
    pub fn expire_access(&mut self) {
        self.access_expires_at = i64::MIN / 2;
    }
}

/// FNV-1a: a stable, non-reversible fingerprint of the JWT (only tells "same credential").
fn fingerprint(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn state_key(c: &Credentials) -> String {
    format!("{}#{}", c.server_url, c.client_id)
}

#[derive(Serialize, Deserialize, Default)]
struct StateData {
    version: u32,
    #[serde(default)]
    sessions: BTreeMap<String, Stored>,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    jwt_fingerprint: String,
    access_token: String,
    access_expires_at_ms: i64,
    access_ttl: u64,
    refresh_token: Option<String>,
    refresh_expires_at_ms: Option<i64>,
}

fn read_state(path: &Path) -> Option<StateData> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("state file {}: {e}", path.display());
            return None;
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "state file {} is readable by other users: ignoring the tokens in it",
                path.display()
            );
            return None;
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let text = std::fs::read(path).ok()?;
    match serde_json::from_slice(&text) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!("state file {} is not valid: {e}", path.display());
            None
        }
    }
}

/// The stored tokens for these credentials, if any.
pub(crate) fn load(path: &Path, creds: &Credentials) -> Option<Tokens> {
    let mut data = read_state(path)?;
    let s = data.sessions.remove(&state_key(creds))?;
    if s.jwt_fingerprint != fingerprint(&creds.jwt) {
        tracing::debug!("state file: stored tokens belong to another credential");
        return None;
    }
    Some(Tokens {
        access: Secret(s.access_token),
        access_expires_at: s.access_expires_at_ms,
        access_ttl: s.access_ttl,
        refresh: s.refresh_token.map(Secret),
        refresh_expires_at: s.refresh_expires_at_ms,
    })
}

/// Stores (or with `None`, forgets) the tokens for these credentials, keeping other entries.
pub(crate) fn store(
    path: &Path,
    creds: &Credentials,
    tokens: Option<&Tokens>,
) -> Result<(), ApiError> {
    let err = |source| ApiError::StateFile {
        path: path.to_owned(),
        source,
    };
    let mut data = read_state(path).unwrap_or_default();
    data.version = 1;
    let key = state_key(creds);
    match tokens {
        Some(t) => {
            data.sessions.insert(
                key,
                Stored {
                    jwt_fingerprint: fingerprint(&creds.jwt),
                    access_token: t.access.0.clone(),
                    access_expires_at_ms: t.access_expires_at,
                    access_ttl: t.access_ttl,
                    refresh_token: t.refresh.as_ref().map(|r| r.0.clone()),
                    refresh_expires_at_ms: t.refresh_expires_at,
                },
            );
        }
        None => {
            data.sessions.remove(&key);
        }
    }
    let bytes = serde_json::to_vec_pretty(&data).map_err(|e| err(std::io::Error::other(e)))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(dir).map_err(err)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let write = || -> std::io::Result<()> {
        let mut f = opts.open(&tmp)?;
        #[cfg(unix)]
        {
            // `mode` only applies on creation: a stale temporary file keeps its mode otherwise.
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn creds(jwt: &str) -> Credentials {
        Credentials {
            server_url: "http://127.0.0.1:1".into(),
            client_id: "cid".into(),
            client_secret: "sec".into(),
            jwt: jwt.into(),
        }
    }

    #[test]
    fn token_answer_and_renewal_times() {
        let now = 1_000_000;
        let t = Tokens::from_response(
            &json!({"access_token": "A", "token_type": "bearer", "expires_in": 3600,
                    "refresh_token": "R", "refresh_token_expires_in": 604800, "scope": "x"}),
            now,
        )
        .unwrap();
        assert_eq!(t.access_expires_at, now + 3_600_000);
        assert!(t.access_fresh(now + 3_539_000));
        assert!(!t.access_fresh(now + 3_540_000), "renews 60 s early");
        assert_eq!(t.usable_refresh(now).map(|s| s.0.as_str()), Some("R"));
        assert!(t.usable_refresh(now + 604_796_000).is_none());
        // Short lifetimes renew a fifth early, not 60 s early.
        let t =
            Tokens::from_response(&json!({"access_token": "A", "expires_in": 10}), now).unwrap();
        assert!(t.access_fresh(now + 7_999));
        assert!(!t.access_fresh(now + 8_000));
        assert!(t.refresh.is_none() && t.usable_refresh(now).is_none());
        assert!(Tokens::from_response(&json!({"expires_in": 10}), now).is_err());
        assert!(Tokens::from_response(&json!({"access_token": "A"}), now).is_err());
        assert_eq!(format!("{t:?}").matches("<redacted>").count(), 1);
        assert!(!format!("{t:?}").contains("\"A\""));
    }

    #[test]
    fn state_file_round_trip_is_private_and_keyed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        let t = Tokens::from_response(
            &json!({"access_token": "A1", "expires_in": 60, "refresh_token": "R1"}),
            5,
        )
        .unwrap();
        store(&path, &creds("jwt-1"), Some(&t)).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load(&path, &creds("jwt-1")), Some(t.clone()));
        // Another JWT (another user) does not get these tokens.
        assert_eq!(load(&path, &creds("jwt-2")), None);
        // Another client id is another entry; both survive.
        let mut other = creds("jwt-1");
        other.client_id = "cid2".into();
        store(&path, &other, Some(&t)).unwrap();
        assert!(load(&path, &creds("jwt-1")).is_some() && load(&path, &other).is_some());
        store(&path, &other, None).unwrap();
        assert!(load(&path, &other).is_none() && load(&path, &creds("jwt-1")).is_some());
        // Readable by others: not trusted, and the next write makes it private again.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load(&path, &creds("jwt-1")), None);
        store(&path, &creds("jwt-1"), Some(&t)).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Garbage is ignored, not fatal.
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(load(&path, &creds("jwt-1")), None);
        // The JWT itself is never written.
        store(&path, &creds("jwt-1"), Some(&t)).unwrap();
        assert!(!std::fs::read_to_string(&path).unwrap().contains("jwt-1"));
    }
}
