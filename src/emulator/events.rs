//! Telephony session events: what a call looks like to a subscriber, as pure functions of the
//! call and the notification settings.
//!
//! Every call has a timeline of party statuses ([`timeline`]): `Setup` at its start, `Proceeding`
//! and (unless missed) `Answered` shortly after, `Disconnected` at its end; with the transfer
//! setting, a `Disconnected` with `status.reason` `BlindTransfer` halfway through the answered
//! part (the session goes on). Each step becomes one event body in the seed's shape
//! ([`event_body`]), numbered by the per-session `body.sequence` (1, 2, ...). Recordings show
//! from `Answered` on: `active: true` while the call goes on, `active: false` once disconnected.
//!
//! Event filters ([`Filter`]) are the two telephony-session paths of the contract, account and
//! extension level, with the optional `withRecordings=true` and `statusCode=...` queries.

use serde_json::{Value, json};

use super::Notifications;
use super::data::{ACCOUNT_ID, Call, OWNER_EXTENSION_ID, Party};
use super::state::fmt_ms;

/// One status change of a call's party.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Step {
    /// When it happens (Unix ms): the event's `eventTime`.
    pub at_ms: i64,
    /// `body.sequence`: 1 for the first step of the session.
    pub sequence: u64,
    pub code: &'static str,
    pub reason: Option<&'static str>,
    /// `Some(active)` once the recording shows (calls with a recording only).
    pub recording_active: Option<bool>,
}

/// The steps of a call in time order (see the module docs). Steps that fall on the same
/// millisecond keep their order.
pub(super) fn timeline(c: &Call, s: &Notifications) -> Vec<Step> {
    let start = c.start_ms;
    let end = c.end_ms().max(start);
    let dur = end - start;
    let proceeding = start + (s.proceeding_after.as_millis() as i64).min(dur / 4);
    let answered = start + (s.answered_after.as_millis() as i64).min(dur / 2);
    let answered = answered.max(proceeding);
    let recorded = c.recording.is_some();
    let missed = c.outcome == super::data::Outcome::Missed;
    let mut steps = vec![
        (start, "Setup", None, None),
        (proceeding, "Proceeding", None, None),
    ];
    if !missed {
        steps.push((answered, "Answered", None, recorded.then_some(true)));
        if s.transfer_reason {
            let mid = answered + (end - answered) / 2;
            steps.push((
                mid,
                "Disconnected",
                Some("BlindTransfer"),
                recorded.then_some(true),
            ));
        }
    }
    steps.push((
        end,
        "Disconnected",
        None,
        (recorded && !missed).then_some(false),
    ));
    steps
        .into_iter()
        .enumerate()
        .map(|(i, (at_ms, code, reason, recording_active))| Step {
            at_ms,
            sequence: i as u64 + 1,
            code,
            reason,
            recording_active,
        })
        .collect()
}

/// Where a filter looks: the whole account or the authorized user's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scope {
    Account,
    Extension,
}

/// One parsed event filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Filter {
    /// The filter as the client sent it (echoed in the subscription).
    pub text: String,
    pub scope: Scope,
    /// `withRecordings=true`: only events whose party has a recording.
    pub with_recordings: bool,
    /// `statusCode=A,B`: only events whose party status is one of these.
    pub status_codes: Option<Vec<String>>,
}

impl Filter {
    /// Parses `/restapi/v1.0/account/{~|id}[/extension/{~|id}]/telephony/sessions[?query]`;
    /// `None` for anything else (another path, another account or extension, an unknown query
    /// parameter).
    pub fn parse(text: &str) -> Option<Filter> {
        let (path, query) = text.split_once('?').unwrap_or((text, ""));
        let rest = path.strip_prefix("/restapi/v1.0/account/")?;
        let (account, rest) = rest.split_once('/')?;
        if account != "~" && account != ACCOUNT_ID {
            return None;
        }
        let scope = match rest {
            "telephony/sessions" => Scope::Account,
            _ => {
                let rest = rest.strip_prefix("extension/")?;
                let (ext, rest) = rest.split_once('/')?;
                if (ext != "~" && ext != OWNER_EXTENSION_ID) || rest != "telephony/sessions" {
                    return None;
                }
                Scope::Extension
            }
        };
        let mut f = Filter {
            text: text.to_string(),
            scope,
            with_recordings: false,
            status_codes: None,
        };
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "withRecordings" => f.with_recordings = v.eq_ignore_ascii_case("true"),
                "statusCode" => f
                    .status_codes
                    .get_or_insert_with(Vec::new)
                    .extend(v.split(',').map(|c| c.trim().to_string())),
                _ => return None,
            }
        }
        Some(f)
    }

    /// The event's `event` field for this filter: the path with the ids filled in.
    pub fn event_path(&self) -> String {
        match self.scope {
            Scope::Account => format!("/restapi/v1.0/account/{ACCOUNT_ID}/telephony/sessions"),
            Scope::Extension => format!(
                "/restapi/v1.0/account/{ACCOUNT_ID}/extension/{OWNER_EXTENSION_ID}/telephony/sessions"
            ),
        }
    }

    /// Whether the filter passes this step of this call.
    pub fn matches(&self, c: &Call, step: &Step) -> bool {
        if self.scope == Scope::Extension && c.extension().id != OWNER_EXTENSION_ID {
            return false;
        }
        if self.with_recordings && step.recording_active.is_none() {
            return false;
        }
        self.status_codes
            .as_ref()
            .is_none_or(|codes| codes.iter().any(|x| x == step.code))
    }
}

fn party_json(p: &Party) -> Value {
    let mut v = json!({});
    if let Some(n) = &p.phone_number {
        v["phoneNumber"] = json!(n);
    }
    if let Some(n) = &p.name {
        v["name"] = json!(n);
    }
    if let Some(id) = p.extension_id {
        v["extensionId"] = json!(id);
    }
    v
}

/// The `body` of the event for one step: the seed's shape, one party (the call's owner).
pub(super) fn event_body(c: &Call, step: &Step) -> Value {
    let ext = c.extension();
    let mut status = json!({"code": step.code, "rcc": false});
    if let Some(r) = step.reason {
        status["reason"] = json!(r);
    }
    let mut party = json!({
        "accountId": ACCOUNT_ID,
        "extensionId": ext.id,
        "id": format!("cs1{}-2", c.session_id),
        "direction": if c.inbound { "Inbound" } else { "Outbound" },
        "to": party_json(&c.to),
        "from": party_json(&c.from),
        "status": status,
        "missedCall": c.outcome == super::data::Outcome::Missed && step.code == "Disconnected",
        "standAlone": false,
        "muted": false,
    });
    if let (Some(active), Some(r)) = (step.recording_active, &c.recording) {
        party["recordings"] = json!([{"id": r.id, "active": active}]);
    }
    json!({
        "sequence": step.sequence,
        "sessionId": c.session_id,
        "telephonySessionId": c.telephony_session_id,
        "serverId": "10.13.22.241.TAM",
        "eventTime": fmt_ms(step.at_ms),
        "parties": [party],
        "origin": {"type": "Call"},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::AudioFormat;
    use crate::emulator::data::Generator;

    fn call(recorded: bool) -> Call {
        let g = Generator {
            seed: 1,
            format: AudioFormat::Mp3,
            now_ms: 1_780_000_000_000,
            days: 90,
            record_delay_ms: 20_000,
        };
        g.injected(7, 1_780_000_000_000, 60, recorded, true)
    }

    #[test]
    fn timeline_orders_statuses_and_recordings() {
        let s = Notifications::default();
        let steps = timeline(&call(true), &s);
        let codes: Vec<_> = steps.iter().map(|s| (s.code, s.recording_active)).collect();
        assert_eq!(
            codes,
            [
                ("Setup", None),
                ("Proceeding", None),
                ("Answered", Some(true)),
                ("Disconnected", Some(false))
            ]
        );
        assert!(steps.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        assert_eq!(steps[3].at_ms, 1_780_000_060_000);
        assert_eq!(
            steps.iter().map(|s| s.sequence).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );

        let t = Notifications {
            transfer_reason: true,
            ..Notifications::default()
        };
        let steps = timeline(&call(false), &t);
        assert_eq!(steps.len(), 5);
        assert_eq!(steps[3].reason, Some("BlindTransfer"));
        assert!(steps.iter().all(|s| s.recording_active.is_none()));
    }

    #[test]
    fn filters_parse_and_match() {
        let f = Filter::parse("/restapi/v1.0/account/~/extension/~/telephony/sessions").unwrap();
        assert_eq!(f.scope, Scope::Extension);
        let f = Filter::parse(
            "/restapi/v1.0/account/~/telephony/sessions?withRecordings=true&statusCode=Disconnected",
        )
        .unwrap();
        assert_eq!(f.scope, Scope::Account);
        let c = call(true);
        let steps = timeline(&c, &Notifications::default());
        let passed: Vec<_> = steps
            .iter()
            .filter(|s| f.matches(&c, s))
            .map(|s| s.code)
            .collect();
        assert_eq!(passed, ["Disconnected"]);
        assert!(Filter::parse("/restapi/v1.0/account/~/extension/~/message-store").is_none());
        assert!(Filter::parse("/restapi/v1.0/account/999/telephony/sessions").is_none());
        assert!(Filter::parse("/restapi/v1.0/account/~/telephony/sessions?bogus=1").is_none());
        let body = event_body(&c, &steps[2]);
        assert_eq!(body["parties"][0]["status"]["code"], "Answered");
        assert_eq!(body["parties"][0]["recordings"][0]["active"], true);
        assert_eq!(body["sequence"], 3);
    }
}
