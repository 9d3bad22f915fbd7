// The one-line JSON that `mailpipe inspect FILE...` prints per message.

use crate::{classify, Classification};
use serde_json::{json, Value};

/// Classifies `raw` and renders it; an unreadable message yields `kind: "error"` with the reason
/// instead of failing, so a batch of files always prints one line each.
pub fn inspect_json(path_as_given: &str, raw: &[u8]) -> Value {
    match classify(raw) {
        Ok(c) => render(path_as_given, &c),
        Err(e) => json!({"file": path_as_given, "kind": "error", "error": e.to_string(), "recipients": []}),
    }
}

pub fn render(path_as_given: &str, c: &Classification) -> Value {
    let recipients: Vec<Value> = c
        .recipients
        .iter()
        .map(|r| {
            json!({
                "address": r.address,
                "status": r.status,
                "reply_code": r.reply_code,
                "reason": r.reason.as_str(),
                "hard_bounce": r.hard_bounce,
                "permanent": r.permanent,
                "signals": r.signals,
                "confident": r.confident(),
                "diagnostic": r.diagnostic,
                "action": r.action,
                "remote_mta": r.remote_mta,
            })
        })
        .collect();
    let fb = c.feedback.as_ref();
    json!({
        "file": path_as_given,
        "kind": c.kind.as_str(),
        "recipients": recipients,
        "feedback_type": fb.map(|f| f.feedback_type.clone()),
        "original_message_id": c.original_message_id,
        "original_rcpt_to": fb.map(|f| f.original_rcpt_to.clone()),
        "source_ip": fb.and_then(|f| f.source_ip.clone()),
        "reported_domain": fb.and_then(|f| f.reported_domain.clone()),
        "arrival_date": fb.and_then(|f| f.arrival_date.clone()),
        "reporting_mta": c.reporting_mta,
        "in_reply_to": c.thread.candidate_message_ids,
        "from_address": c.thread.from_address,
        "normalized_subject": c.thread.normalized_subject,
        "auto_reply_signal": c.auto_reply_signal,
    })
}
