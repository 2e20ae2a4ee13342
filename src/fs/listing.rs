//! Listing dates: which call-log request to send next, and taking in what it returns.
//!
//! The plan itself is a pure function ([`super::plan::plan_page`]); this part holds the clocks,
//! the one-listing-at-a-time lock, the silence bound on waiting for the API, and the scope
//! switch when the account call log is refused.

use tokio::time::Instant;

use jiff::Timestamp;
use jiff::civil::Date;

use super::plan::{self, PagePlan};
use super::{Fs, FsError, ScopeChoice, State, index};
use crate::api::{ApiError, Priority, Scope};

impl Fs {
    pub(super) fn is_listed(&self, st: &State, date: Date, now: Timestamp) -> bool {
        match st.index.listed.get(&date) {
            None => false,
            Some(at) => !self.is_recent(date, now) || at.elapsed() < self.recent_listing_ttl(st),
        }
    }

    /// Makes sure `date` is listed and its records in memory (read from the call index first,
    /// then from the call log), spending as few call-log requests as the rules in the module
    /// docs allow.
    pub(super) async fn ensure_date(&self, date: Date) -> Result<(), FsError> {
        self.load_date(date).await;
        self.list_known(date).await?;
        let mut st = self.state();
        self.evict(&mut st, date);
        Ok(())
    }

    /// Lists `date` again in the background, as the live feed's re-lists do: readers of the
    /// date meanwhile get what was listed before ([`Fs::list_known`]), and this one waits for
    /// the request. A page that covers other dates being re-listed ends their wait too.
    pub(super) async fn refresh_date(&self, date: Date) -> Result<(), FsError> {
        if self.api_down() {
            // Readers are served what is known while it is down (`list_known`); a re-list
            // would only wait out the read timeout.
            self.state().live.refreshing.remove(&date);
            return Ok(());
        }
        self.load_date(date).await;
        let listed = self
            .bounded(|| format!("re-listing {date}"), self.list_date(date))
            .await
            .and_then(|r| r);
        let mut st = self.state();
        let now = Timestamp::now();
        let done: Vec<Date> = st
            .live
            .refreshing
            .iter()
            .copied()
            .filter(|d| *d == date || self.is_listed(&st, *d, now))
            .collect();
        for d in done {
            st.live.refreshing.remove(&d);
        }
        self.evict(&mut st, date);
        listed
    }

    /// Lists `date` through the call log unless it is listed (or, while the API is down, was
    /// listed before; or is being listed again in the background, [`Fs::refresh_date`]).
    async fn list_known(&self, date: Date) -> Result<(), FsError> {
        let now = Timestamp::now();
        {
            let st = self.state();
            if self.is_listed(&st, date, now) {
                return Ok(());
            }
            if st.live.refreshing.contains(&date) {
                // What was listed, at once: a safety re-list is not something to wait for.
                return Ok(());
            }
            if self.api_down() {
                // What is known, at once, rather than a wait for an API that does not answer.
                return if self.listed_before(&st, date) {
                    Ok(())
                } else {
                    Err(FsError::Offline)
                };
            }
        }
        // Dropping the listing midway (see `bounded`) is safe: nothing is recorded until a page
        // has arrived.
        self.bounded(|| format!("listing {date}"), self.list_date(date))
            .await?
    }

    /// Runs `f`, an operation waiting on the API, and fails with [`FsError::TimedOut`] (EIO)
    /// after `read_timeout` in which no call-log page arrived.
    ///
    /// With a hung API the client's own limits (a stall timeout per attempt, times its retries)
    /// let one `ls` block for minutes, and every other listing queued behind it on the listing
    /// lock (found by tests/faults.rs). But the bound is on *silence*, not on the whole
    /// operation: every page that arrives, for this operation or for the listing ahead of it,
    /// restarts the clock. A date of 20,000 recordings takes two minutes at RingCentral's 10
    /// pages a minute, and must not fail while pages flow.
    pub(super) async fn bounded<T>(
        &self,
        what: impl FnOnce() -> String,
        f: impl std::future::Future<Output = T>,
    ) -> Result<T, FsError> {
        let mut pages = self.pages.subscribe();
        tokio::pin!(f);
        loop {
            tokio::select! {
                done = &mut f => return Ok(done),
                _ = pages.changed() => continue,
                _ = tokio::time::sleep(self.config.read_timeout) => {
                    tracing::warn!("{}: no answer from the API within {:?}", what(), self.config.read_timeout);
                    return Err(FsError::TimedOut);
                }
            }
        }
    }

    async fn list_date(&self, date: Date) -> Result<(), FsError> {
        let _one_listing_at_a_time = self.listing.lock().await;
        loop {
            let now = Timestamp::now();
            let plan = {
                let st = self.state();
                if self.is_listed(&st, date, now) {
                    return Ok(());
                }
                self.plan(&st, date, now)
            };
            self.run_page(plan).await?;
        }
    }

    /// Chooses the next request for listing `date` ([`plan::plan_page`]), with the clocks
    /// applied here: a cursor over dates that may still change is continued only within
    /// `recent_ttl` of its last page, or its next pages would miss calls that appeared since.
    fn plan(&self, st: &State, date: Date, now: Timestamp) -> PagePlan {
        let w = &self.config.window;
        let cursor = st.index.cursor.as_ref().filter(|c| {
            c.created.elapsed() < self.config.recent_ttl
                || !self.is_recent(w.date_of(c.oldest), now)
        });
        if let Some(catch_up) = self.catch_up_plan(st, date, cursor, now) {
            return catch_up;
        }
        plan::plan_page(
            date,
            |d| self.is_listed(st, d, now),
            w,
            st.density.per_sec(),
            cursor,
            now,
        )
    }

    async fn run_page(&self, plan: PagePlan) -> Result<(), FsError> {
        let scope = self.scope().await?;
        let result = self
            .log
            .page(
                scope,
                plan.from,
                plan.to,
                plan.next.clone(),
                Priority::Interactive,
            )
            .await;
        let page = match result {
            Ok(page) => page,
            // The caller loops and plans again, in the extension's call log.
            Err(e) if self.switch_scope_on(scope, &e) => return Ok(()),
            Err(e) => {
                if plan.next.is_some() {
                    self.state().index.cursor = None;
                }
                return Err(
                    self.api_error(format!("listing calls {} .. {}", plan.from, plan.to), e)
                );
            }
        };
        self.pages.send_modify(|n| *n += 1);
        let mut guard = self.state();
        let st = &mut *guard;
        let count = page.records.len();
        let oldest = page.records.iter().map(|r| r.start_time).min();
        let w = &self.config.window;
        let at = Instant::now();
        let calls = self.to_store(&page.records);
        let fresh = Fs::new_recordings(st, &page.records);
        st.index.add_records(page.records, w);
        let first_request = plan.next.is_none();
        let exhausted = page.next.is_none();
        // The oldest record of the previous page of this query: where this page takes over.
        let prev_oldest = st
            .index
            .cursor
            .as_ref()
            .filter(|_| !first_request)
            .map(|c| c.oldest);
        let upper = prev_oldest.unwrap_or(plan.to);
        let marked = match page.next {
            Some(next) => {
                let oldest = oldest.or(prev_oldest).unwrap_or(plan.to);
                st.density
                    .observe(count, upper.duration_since(oldest).as_secs_f64());
                let marked = st
                    .index
                    .mark_listed(w, plan.from, plan.to, Some(oldest), at);
                st.index.cursor = Some(index::Cursor {
                    from: plan.from,
                    to: plan.to,
                    next,
                    oldest,
                    created: at,
                });
                marked
            }
            None => {
                st.density
                    .observe(count, upper.duration_since(plan.from).as_secs_f64());
                let marked = st.index.mark_listed(w, plan.from, plan.to, None, at);
                if !first_request {
                    st.index.cursor = None;
                }
                marked
            }
        };
        let (readable, changed) = self.after_listing(st, fresh, &marked);
        self.after_page(st, &plan, calls, marked, exhausted, at);
        drop(guard);
        self.publish(readable, changed);
        Ok(())
    }

    /// The scope to query, deciding `Auto` as `Account` until a 403 says otherwise.
    pub(super) async fn scope(&self) -> Result<Scope, FsError> {
        let mut st = self.state();
        if let Some(s) = st.scope {
            return Ok(s);
        }
        let s = match self.config.scope {
            ScopeChoice::Fixed(s) => s,
            ScopeChoice::Auto => Scope::Account,
        };
        st.scope = Some(s);
        drop(st);
        self.keep_fact("scope", s.name());
        Ok(s)
    }

    /// Whether `e`, the answer to a request in `scope`, says this user may not read the account
    /// call log; with `--scope auto` the mount then switches to the extension's call log, here
    /// and only here, once.
    pub(super) fn switch_scope_on(&self, scope: Scope, e: &ApiError) -> bool {
        if self.config.scope == ScopeChoice::Auto && scope == Scope::Account && e.is_forbidden() {
            tracing::info!(
                "this user may not read the account call log ({e}); using the extension call log"
            );
            self.state().scope = Some(Scope::Extension);
            self.keep_fact("scope", Scope::Extension.name());
            true
        } else {
            false
        }
    }
}
