//! Where the client's credentials come from: the environment or a private file.
//!
//! Both accept the RingCentral SDK spellings (`RC_*` from ringcentral-js, `RINGCENTRAL_*` from
//! ringcentral-python). Values never appear in `Debug` output or error messages: errors name the
//! setting that is missing, not its content.

use std::fmt;
use std::path::Path;

use super::error::ApiError;

/// The production API host, used when no server URL is configured.
pub const DEFAULT_SERVER_URL: &str = "https://platform.ringcentral.com";

/// App credentials and the user's JWT.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// API base URL, e.g. `https://platform.ringcentral.com` (no trailing slash).
    pub server_url: String,
    /// The app's client id (not secret, but identifies the app).
    pub client_id: String,
    /// The app's client secret. Never logged.
    pub client_secret: String,
    /// The user's JWT credential for the JWT bearer grant. Never logged.
    pub jwt: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("server_url", &self.server_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("jwt", &"<redacted>")
            .finish()
    }
}

/// Accepted names for each setting, first match wins.
const SERVER: &[&str] = &["RC_SERVER_URL", "RINGCENTRAL_SERVER_URL"];
const CLIENT_ID: &[&str] = &["RC_CLIENT_ID", "RINGCENTRAL_CLIENT_ID"];
const CLIENT_SECRET: &[&str] = &["RC_CLIENT_SECRET", "RINGCENTRAL_CLIENT_SECRET"];
const JWT: &[&str] = &["RC_JWT", "RINGCENTRAL_JWT_TOKEN", "RINGCENTRAL_JWT"];

impl Credentials {
    /// Reads `RC_SERVER_URL` (default [`DEFAULT_SERVER_URL`]), `RC_CLIENT_ID`,
    /// `RC_CLIENT_SECRET`, `RC_JWT`, or their `RINGCENTRAL_*` spellings.
    pub fn from_env() -> Result<Self, ApiError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads a file of `NAME=value` lines (same names as [`Credentials::from_env`]; blank lines,
    /// `#` comments, an `export ` prefix and quotes around values are accepted). The file must not
    /// be accessible by group or others (`mode & 0o077 == 0`).
    pub fn from_file(path: &Path) -> Result<Self, ApiError> {
        let io = |source| ApiError::StateFile {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(ApiError::Credentials(format!(
                    "{} is accessible by other users (mode {:o}); run chmod 600 on it",
                    path.display(),
                    mode & 0o777
                )));
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        let text = std::fs::read_to_string(path).map_err(io)?;
        let pairs = parse_env_file(&text);
        Self::from_lookup(|name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }

    /// Builds credentials from any name -> value lookup (empty values count as missing).
    pub(crate) fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ApiError> {
        let get = |names: &[&str]| {
            names.iter().find_map(|n| {
                lookup(n)
                    .map(|v| v.trim().to_owned())
                    .filter(|v| !v.is_empty())
            })
        };
        let missing =
            |names: &[&str]| ApiError::Credentials(format!("{} is not set", names.join(" or ")));
        let server_url = get(SERVER).unwrap_or_else(|| DEFAULT_SERVER_URL.to_owned());
        let server_url = server_url.trim_end_matches('/').to_owned();
        if url::Url::parse(&server_url).is_err() {
            return Err(ApiError::Credentials(format!("{} is not a URL", SERVER[0])));
        }
        Ok(Credentials {
            server_url,
            client_id: get(CLIENT_ID).ok_or_else(|| missing(CLIENT_ID))?,
            client_secret: get(CLIENT_SECRET).ok_or_else(|| missing(CLIENT_SECRET))?,
            jwt: get(JWT).ok_or_else(|| missing(JWT))?,
        })
    }
}

/// Parses `NAME=value` lines.
fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (k, v) = line.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_owned(), v.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn rc_and_ringcentral_spellings() {
        let c = Credentials::from_lookup(lookup(&[
            ("RC_CLIENT_ID", "id1"),
            ("RC_CLIENT_SECRET", "sec1"),
            ("RC_JWT", "jwt1"),
        ]))
        .unwrap();
        assert_eq!(c.server_url, DEFAULT_SERVER_URL);
        assert_eq!(
            (
                c.client_id.as_str(),
                c.client_secret.as_str(),
                c.jwt.as_str()
            ),
            ("id1", "sec1", "jwt1")
        );

        let c = Credentials::from_lookup(lookup(&[
            (
                "RINGCENTRAL_SERVER_URL",
                "https://platform.ringcentral.biz/",
            ),
            ("RINGCENTRAL_CLIENT_ID", "id2"),
            ("RINGCENTRAL_CLIENT_SECRET", "sec2"),
            ("RINGCENTRAL_JWT_TOKEN", "jwt2"),
        ]))
        .unwrap();
        assert_eq!(c.server_url, "https://platform.ringcentral.biz");
        assert_eq!(c.jwt, "jwt2");
    }

    #[test]
    fn missing_setting_is_named_not_valued() {
        let e = Credentials::from_lookup(lookup(&[
            ("RC_CLIENT_ID", "id1"),
            ("RC_JWT", "jwt-value-xyz"),
        ]))
        .unwrap_err();
        let s = e.to_string();
        assert!(s.contains("RC_CLIENT_SECRET"), "{s}");
        assert!(!s.contains("jwt-value-xyz"));
    }

    #[test]
    fn debug_redacts() {
        let c = Credentials {
            server_url: "http://x".into(),
            client_id: "cid".into(),
            client_secret: "very-secret".into(),
            jwt: "eyJ-jwt".into(),
        };
        let d = format!("{c:?}");
        assert!(
            d.contains("cid") && !d.contains("very-secret") && !d.contains("eyJ-jwt"),
            "{d}"
        );
    }

    #[test]
    fn file_requires_private_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("creds");
        std::fs::write(
            &p,
            "# ringfs\nexport RC_SERVER_URL=\"http://127.0.0.1:9\"\nRC_CLIENT_ID=abc\nRC_CLIENT_SECRET='s=1'\n\nRC_JWT=j.w.t\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Credentials::from_file(&p).unwrap_err();
        assert!(matches!(e, ApiError::Credentials(_)), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Credentials::from_file(&p).unwrap();
        assert_eq!(c.server_url, "http://127.0.0.1:9");
        assert_eq!(c.client_id, "abc");
        assert_eq!(c.client_secret, "s=1");
        assert_eq!(c.jwt, "j.w.t");
    }
}
