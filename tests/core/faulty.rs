//! A [`CallLog`] wrapper that injects failures: each call gets an outcome, from a script of
//! per-call outcomes (in call order), else from the first standing rule that matches it, else
//! it passes through. Every call is recorded with the outcome it got, including those that
//! never reached the wrapped log.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use ringfs::api::{ApiError, CallRecord, Priority, RecordingMeta, Scope};
use ringfs::fs::{CallLog, Page};
use ringfs::media::BoxFuture;
use tokio::sync::watch;

use super::scripted::Query;

/// What one call gets.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Passed to the wrapped log.
    Pass,
    /// 403 `CMN-408`: the user may not read this (RingCentral's answer to a non-admin asking for
    /// the account call log).
    Forbidden,
    /// 404 `CMN-102`.
    NotFound,
    /// A 5xx status.
    ServerError(u16),
    /// Never answers until [`Faulty::release`], then passes.
    Hang,
    /// Passes after this long (tokio time, so paused-time tests take no real time).
    Delay(Duration),
}

type Rule = (Box<dyn Fn(&Query) -> bool + Send + Sync>, Outcome);

pub struct Faulty {
    inner: Arc<dyn CallLog>,
    script: Mutex<VecDeque<Outcome>>,
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<(Query, Outcome)>>,
    /// Bumped by `release`: a hung call waits for it to pass the value it saw.
    released: watch::Sender<u64>,
}

impl Faulty {
    pub fn new(inner: Arc<dyn CallLog>) -> Faulty {
        Faulty {
            inner,
            script: Mutex::default(),
            rules: Mutex::default(),
            seen: Mutex::default(),
            released: watch::Sender::new(0),
        }
    }

    /// The next calls, whatever they are, get these outcomes in order.
    pub fn script(&self, outcomes: impl IntoIterator<Item = Outcome>) {
        self.script.lock().unwrap().extend(outcomes);
    }

    /// Every call that `when` matches gets `outcome` (once the script is used up).
    pub fn always(&self, when: impl Fn(&Query) -> bool + Send + Sync + 'static, outcome: Outcome) {
        self.rules.lock().unwrap().push((Box::new(when), outcome));
    }

    /// Removes the standing rules.
    pub fn clear_rules(&self) {
        self.rules.lock().unwrap().clear();
    }

    /// Lets every call hung so far go on (to the wrapped log).
    pub fn release(&self) {
        self.released.send_modify(|n| *n += 1);
    }

    /// Every call so far with the outcome it got.
    pub fn seen(&self) -> Vec<(Query, Outcome)> {
        self.seen.lock().unwrap().clone()
    }

    /// Decides and records the outcome of `q`, then acts on it: `Ok` means "pass it on".
    async fn enter(&self, q: Query) -> Result<(), ApiError> {
        let outcome = self.script.lock().unwrap().pop_front().unwrap_or_else(|| {
            let rules = self.rules.lock().unwrap();
            rules
                .iter()
                .find(|(when, _)| when(&q))
                .map(|(_, o)| o.clone())
                .unwrap_or(Outcome::Pass)
        });
        let context = match (q.scope, &q.id) {
            (Some(scope), _) => format!("GET {} call log", scope.name()),
            (None, Some(id)) => format!("recording {id} metadata"),
            (None, None) => "call log".to_string(),
        };
        self.seen.lock().unwrap().push((q, outcome.clone()));
        let service = |status: u16, code: Option<&str>, message: &str| ApiError::Service {
            status,
            error_code: code.map(String::from),
            message: message.into(),
            context: context.clone(),
        };
        match outcome {
            Outcome::Pass => Ok(()),
            Outcome::Forbidden => Err(service(
                403,
                Some("CMN-408"),
                "In order to call this API endpoint, user needs to have [ReadCompanyCallLog] permission for requested resource.",
            )),
            Outcome::NotFound => Err(service(
                404,
                Some("CMN-102"),
                "Resource for parameter [id] is not found",
            )),
            Outcome::ServerError(status) => {
                Err(service(status, None, "Service Temporarily Unavailable"))
            }
            Outcome::Hang => {
                let mut released = self.released.subscribe();
                let seen = *released.borrow_and_update();
                // The sender lives in `self`, which outlives this call: `wait_for` cannot fail.
                let _ = released.wait_for(|n| *n > seen).await;
                Ok(())
            }
            Outcome::Delay(d) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
        }
    }
}

impl CallLog for Faulty {
    fn page(
        &self,
        scope: Scope,
        from: Timestamp,
        to: Timestamp,
        next: Option<String>,
        prio: Priority,
    ) -> BoxFuture<'_, Result<Page, ApiError>> {
        Box::pin(async move {
            self.enter(Query::page(scope, from, to, next.clone()))
                .await?;
            self.inner.page(scope, from, to, next, prio).await
        })
    }

    fn find_session<'a>(
        &'a self,
        scope: Scope,
        session_id: &'a str,
        since: Timestamp,
        prio: Priority,
    ) -> BoxFuture<'a, Result<Vec<CallRecord>, ApiError>> {
        Box::pin(async move {
            self.enter(Query::find_session(scope, session_id, since))
                .await?;
            self.inner
                .find_session(scope, session_id, since, prio)
                .await
        })
    }

    fn recording_meta<'a>(
        &'a self,
        id: &'a str,
        prio: Priority,
    ) -> BoxFuture<'a, Result<RecordingMeta, ApiError>> {
        Box::pin(async move {
            self.enter(Query::recording_meta(id)).await?;
            self.inner.recording_meta(id, prio).await
        })
    }

    fn recording_content_url(&self, id: &str) -> Option<String> {
        self.inner.recording_content_url(id)
    }
}
