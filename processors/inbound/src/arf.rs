// Spam complaints: ARF feedback reports (RFC 5965) and mailto unsubscribe requests sent by mail
// clients on the user's behalf, which a sender must honour like a complaint.

use crate::dsn::{clean_address, header_addresses, is_address};
use crate::mime::{split_headers, Message};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Feedback {
    /// abuse, fraud, virus, other, not-spam, auth-failure, opt-out (lowercased as sent).
    pub feedback_type: String,
    pub user_agent: Option<String>,
    pub original_mail_from: Option<String>,
    pub original_rcpt_to: Vec<String>,
    pub source_ip: Option<String>,
    pub reported_domain: Option<String>,
    pub reported_uri: Option<String>,
    pub arrival_date: Option<String>,
    pub authentication_results: Option<String>,
}

/// The feedback report of an ARF message, if it is one.
pub fn parse(msg: &Message) -> Option<Feedback> {
    let part = msg.parts.iter().find(|p| p.content_type == "message/feedback-report");
    let is_arf = msg.report_type == "feedback-report" || part.is_some();
    if !is_arf {
        return unsubscribe_request(msg);
    }
    let mut fb = Feedback::default();
    if let Some(part) = part {
        // The report is one header block; blank lines inside it are tolerated.
        for block in part.text.split("\n\n") {
            let (h, _) = split_headers(block.as_bytes());
            for f in &h.0 {
                let v = f.value.trim().to_string();
                match f.name.as_str() {
                    "feedback-type" => fb.feedback_type = v.to_ascii_lowercase(),
                    "user-agent" => fb.user_agent = Some(v),
                    "original-mail-from" => fb.original_mail_from = Some(clean_address(&v)),
                    "original-rcpt-to" | "removal-recipient" => {
                        let a = clean_address(&v);
                        if is_address(&a) && !fb.original_rcpt_to.contains(&a) {
                            fb.original_rcpt_to.push(a);
                        }
                    }
                    "source-ip" => fb.source_ip = Some(v),
                    "reported-domain" => fb.reported_domain = Some(v),
                    "reported-uri" => fb.reported_uri = Some(v),
                    "arrival-date" | "received-date" => fb.arrival_date = Some(v),
                    "authentication-results" => fb.authentication_results = Some(v),
                    _ => {}
                }
            }
        }
    }
    if fb.feedback_type.is_empty() {
        fb.feedback_type = "abuse".to_string();
    }
    Some(fb)
}

/// Apple Mail and similar clients unsubscribe by mailing the List-Unsubscribe mailto address.
fn unsubscribe_request(msg: &Message) -> Option<Feedback> {
    let apple = msg.headers.get("x-apple-unsubscribe").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let subject = msg.headers.get("subject").unwrap_or("").trim().to_ascii_lowercase();
    let to = msg.headers.get("to").unwrap_or("").to_ascii_lowercase();
    let to_unsub_address = to.contains("unsubscribe") || to.contains("opt-out") || to.contains("optout");
    if !(apple || (subject == "unsubscribe" && to_unsub_address)) {
        return None;
    }
    let from = msg.headers.get("from").map(header_addresses).unwrap_or_default();
    Some(Feedback {
        feedback_type: "opt-out".to_string(),
        original_rcpt_to: from,
        arrival_date: msg.headers.get("date").map(str::to_string),
        ..Feedback::default()
    })
}
