//! Ids asked for by name: `by-session/<id>` through the call log, `by-recording/<id>.ext`
//! through the media URL built from the id and then the recording metadata, with a bounded
//! negative cache so an unknown id costs one request per `negative_ttl`, not one per look.

use tokio::time::Instant;

use jiff::Timestamp;

use super::live::Awaited;
use super::{Fs, FsError, KnownRecording, NEGATIVE_CAP};
use crate::api::{Priority, Scope};
use crate::catalog::{self, AudioKind};
use crate::media::{Known, MediaError, RecordingKey};

impl Fs {
    fn negative_hit(&self, key: &str) -> bool {
        let mut st = self.state();
        match st.negative.get(key) {
            Some(at) if at.elapsed() < self.config.negative_ttl => true,
            Some(_) => {
                st.negative.remove(key);
                false
            }
            None => false,
        }
    }

    fn remember_absent(&self, key: String) {
        let mut st = self.state();
        if st.negative.len() >= NEGATIVE_CAP {
            st.negative.clear();
        }
        st.negative.insert(key, Instant::now());
    }

    pub(super) async fn resolve_session(&self, session_id: &str) -> Result<(), FsError> {
        self.hold_session(session_id).await;
        if self
            .state()
            .index
            .sessions
            .get(session_id)
            .is_some_and(|s| !s.recordings().is_empty())
        {
            return Ok(());
        }
        // Announced by the event feed: its record is on its way (no request, no negative entry).
        if let Some(found) = self.wait_announced(Awaited::Session(session_id)).await {
            return found;
        }
        let key = format!("s:{session_id}");
        if !catalog::is_plausible_id(session_id) || self.negative_hit(&key) {
            return Err(FsError::NotFound);
        }
        if self.api_down() {
            return Err(FsError::Offline);
        }
        let scope = self.scope().await?;
        let since = Timestamp::now()
            .checked_sub(jiff::SignedDuration::try_from(self.config.retention).unwrap_or_default())
            .unwrap_or(Timestamp::MIN);
        let find = self
            .log
            .find_session(scope, session_id, since, Priority::Interactive);
        let records = match self
            .bounded(|| format!("looking up session {session_id}"), find)
            .await?
        {
            Ok(r) => r,
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) if self.switch_scope_on(scope, &e) => {
                let find = self.log.find_session(
                    Scope::Extension,
                    session_id,
                    since,
                    Priority::Interactive,
                );
                self.bounded(|| format!("looking up session {session_id}"), find)
                    .await?
                    .map_err(|e| self.api_error(format!("looking up session {session_id}"), e))?
            }
            Err(e) => return Err(self.api_error(format!("looking up session {session_id}"), e)),
        };
        let records: Vec<_> = records
            .into_iter()
            .filter(|r| r.session_id == session_id)
            .collect();
        if records.iter().all(|r| r.recordings.is_empty()) {
            self.remember_absent(key);
            return Err(FsError::NotFound);
        }
        self.keep_records(records);
        Ok(())
    }

    pub(super) async fn resolve_recording(&self, id: &str) -> Result<(), FsError> {
        self.hold_recording(id).await;
        if self.state().index.recordings.contains_key(id) {
            return Ok(());
        }
        if let Some(found) = self.wait_announced(Awaited::Recording(id)).await {
            return found;
        }
        let key = format!("r:{id}");
        if !catalog::is_plausible_id(id) || self.negative_hit(&key) {
            return Err(FsError::NotFound);
        }
        // Approach 2: the media URL built from the id. Opening it starts the download that the
        // read will use, so when it works it costs nothing extra.
        if let Some(url) = self.log.recording_content_url(id) {
            let rk = RecordingKey {
                id: id.to_string(),
                content_uri: url.clone(),
            };
            match self.media.open(&rk, Priority::Interactive).await {
                Ok(known) => {
                    self.media.close(&rk);
                    self.learn_kind(id, &known);
                    self.add_bare_recording(id, url, None);
                    return Ok(());
                }
                Err(MediaError::NotAvailable(_)) => {}
                Err(e) => return Err(FsError::media(id, e)),
            }
        }
        // Approach 3's fallback: ask the API where the recording lives.
        if self.api_down() {
            return Err(FsError::Offline);
        }
        let meta = self.log.recording_meta(id, Priority::Interactive);
        match self
            .bounded(|| format!("looking up recording {id}"), meta)
            .await?
        {
            Ok(meta) => {
                if let Some(kind) = meta
                    .content_type
                    .as_deref()
                    .and_then(AudioKind::from_content_type)
                {
                    self.state().kinds.insert(id.to_string(), kind);
                }
                self.add_bare_recording(id, meta.content_uri, meta.duration);
                Ok(())
            }
            Err(e) if e.is_not_found() => {
                self.remember_absent(key);
                Err(FsError::NotFound)
            }
            Err(e) => Err(self.api_error(format!("looking up recording {id}"), e)),
        }
    }

    fn add_bare_recording(&self, id: &str, content_uri: String, duration: Option<u64>) {
        self.state()
            .index
            .recordings
            .entry(id.to_string())
            .or_insert(KnownRecording {
                id: id.to_string(),
                content_uri,
                session_id: None,
                start: None,
                duration,
            });
    }

    pub(super) fn learn_kind(&self, id: &str, known: &Known) {
        if let Some(kind) = known
            .content_type
            .as_deref()
            .and_then(AudioKind::from_content_type)
        {
            let mut st = self.state();
            st.kinds.insert(id.to_string(), kind);
            if st.account_kind.is_none() {
                tracing::info!("this account records in {}", kind.extension());
                st.account_kind = Some(kind);
                drop(st);
                self.keep_fact("format", kind.extension());
            }
        }
    }
}
