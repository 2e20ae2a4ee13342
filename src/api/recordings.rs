//! Recordings: their metadata endpoint, where their content lives, and opening it.
//!
//! A recording's content is on the media host, whose address the API does not state: it is
//! configured, or learned from the `contentUri`s that call-log records and metadata carry, or
//! derived from the API host (`platform.X` -> `media.X`). [`MediaHost`] keeps that knowledge, so
//! a recording known only by its id can be opened with the "manual" content URL without first
//! spending a metadata request.

use std::sync::Mutex;

use super::Priority;
use super::error::ApiError;
use super::media::MediaStream;
use super::pacer::RateGroup;
use super::transport::{Req, Transport};
use crate::model::RecordingMeta;

/// Where recordings' content is served from.
#[derive(Debug)]
pub(crate) struct MediaHost {
    /// The API server's base URL (for deriving `media.X`).
    server: String,
    /// The configured media base; when set it always wins.
    configured: Option<String>,
    /// The media base learned from the last `contentUri` seen.
    learned: Mutex<Option<String>>,
}

/// `scheme://host[:port]` plus any path before `/restapi/` of an absolute URL.
fn media_base_of(uri: &str) -> Option<String> {
    let u = url::Url::parse(uri).ok()?;
    let origin = u.origin();
    if !origin.is_tuple() {
        return None;
    }
    let prefix = u
        .path()
        .find("/restapi/")
        .map(|i| &u.path()[..i])
        .unwrap_or("");
    Some(format!("{}{}", origin.ascii_serialization(), prefix))
}

impl MediaHost {
    pub fn new(server: String, configured: Option<String>) -> MediaHost {
        MediaHost {
            server,
            configured,
            learned: Mutex::new(None),
        }
    }

    /// Remembers the media base of a `contentUri` the service returned.
    pub fn learn(&self, content_uri: &str) {
        if let Some(base) = media_base_of(content_uri) {
            let mut m = self.learned.lock().unwrap_or_else(|p| p.into_inner());
            if m.as_deref() != Some(base.as_str()) {
                tracing::debug!(media_base = %base, "learned media host");
                *m = Some(base);
            }
        }
    }

    /// The "manual" content URL `{media}/restapi/v1.0/account/~/recording/{id}/content`, when a
    /// media base is configured, learned, or derivable (`platform.X` -> `media.X`).
    pub fn content_url(&self, recording_id: &str) -> Option<String> {
        let base = self
            .configured
            .clone()
            .or_else(|| {
                self.learned
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
            })
            .or_else(|| {
                let mut u = url::Url::parse(&self.server).ok()?;
                let host = u.host_str()?.strip_prefix("platform.")?.to_owned();
                u.set_host(Some(&format!("media.{host}"))).ok()?;
                Some(u.origin().ascii_serialization())
            })?;
        let mut url = url::Url::parse(&format!("{}/", base.trim_end_matches('/'))).ok()?;
        url.path_segments_mut().ok()?.pop_if_empty().extend([
            "restapi",
            "v1.0",
            "account",
            "~",
            "recording",
            recording_id,
            "content",
        ]);
        Some(url.to_string())
    }
}

/// `GET /restapi/v1.0/account/~/recording/{id}`; learns the media host from its `contentUri`.
pub(crate) async fn meta(
    transport: &Transport,
    media: &MediaHost,
    recording_id: &str,
    prio: Priority,
) -> Result<RecordingMeta, ApiError> {
    let mut url = url::Url::parse(&format!(
        "{}/restapi/v1.0/account/~/recording/",
        transport.server()
    ))
    .map_err(|e| ApiError::Config(format!("server URL: {e}")))?;
    url.path_segments_mut()
        .map_err(|_| ApiError::Config("server URL cannot have a path".into()))?
        .pop_if_empty()
        .push(recording_id);
    let context = format!("recording {recording_id} metadata");
    let req = Req::get(url.to_string(), RateGroup::Heavy, context.clone());
    let v = transport.get_json(&req, prio).await?;
    let meta =
        RecordingMeta::from_json(&v).map_err(|detail| ApiError::Decode { context, detail })?;
    media.learn(&meta.content_uri);
    Ok(meta)
}

/// Starts streaming `content_uri` from byte `offset`: one request, not retried here (the media
/// layer owns the retry budget of a recording).
pub(crate) async fn open_media(
    transport: &Transport,
    content_uri: &str,
    offset: u64,
    prio: Priority,
) -> Result<MediaStream, ApiError> {
    MediaStream::open(transport.clone(), content_uri.to_owned(), offset, prio).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_url_sources() {
        let m = MediaHost::new("https://platform.ringcentral.com".into(), None);
        assert_eq!(
            m.content_url("123").as_deref(),
            Some("https://media.ringcentral.com/restapi/v1.0/account/~/recording/123/content")
        );
        let m = MediaHost::new("http://127.0.0.1:4000".into(), None);
        assert_eq!(m.content_url("1"), None);
        m.learn("http://127.0.0.1:4001/restapi/v1.0/account/9/recording/5/content");
        assert_eq!(
            m.content_url("1").as_deref(),
            Some("http://127.0.0.1:4001/restapi/v1.0/account/~/recording/1/content")
        );
        let m = MediaHost::new(
            "https://platform.ringcentral.com".into(),
            Some("http://m.example:8/base/".into()),
        );
        assert_eq!(
            m.content_url("a/b").as_deref(),
            Some("http://m.example:8/base/restapi/v1.0/account/~/recording/a%2Fb/content")
        );
    }

    #[test]
    fn media_base_keeps_a_path_prefix() {
        assert_eq!(
            media_base_of("https://m.example/proxy/restapi/v1.0/account/1/recording/2/content")
                .as_deref(),
            Some("https://m.example/proxy")
        );
        assert_eq!(media_base_of("not a url"), None);
    }
}
