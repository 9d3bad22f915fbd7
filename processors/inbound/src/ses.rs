// Amazon SES event notifications delivered by mail through SNS: a JSON document in the body with
// `notificationType` Bounce or Delivery and the per-recipient results AWS documents for it.

use crate::dsn::{find_reply_code, find_status, is_address, Failure};
use crate::mime::Message;
use serde_json::Value;

/// The recipients an SES notification reports, with the reporting MTA; None when the message is
/// not such a notification.
pub fn failures(msg: &Message) -> Option<(Vec<Failure>, Option<String>)> {
    let part = msg.parts.iter().find(|p| p.content_type.starts_with("text/plain"))?;
    let start = part.text.find("{\"notificationType\"")?;
    let doc: Value = serde_json::Deserializer::from_str(&part.text[start..]).into_iter().next()?.ok()?;
    let (list, key, action) = match doc.get("notificationType")?.as_str()? {
        "Bounce" => (doc.get("bounce")?, "bouncedRecipients", "failed"),
        "Delivery" => (doc.get("delivery")?, "recipients", "delivered"),
        _ => return None,
    };
    let reporting_mta = list.get("reportingMTA").and_then(Value::as_str).map(|s| strip_type(s).to_string());
    let mut out = Vec::new();
    for r in list.get(key)?.as_array()? {
        // Delivery lists bare addresses; Bounce lists objects with the remote server's reply.
        let (address, diagnostic, status, act) = match r {
            Value::String(a) => (a.as_str(), str_of(list, "smtpResponse"), None, Some(action)),
            _ => (
                str_of(r, "emailAddress"),
                str_of(r, "diagnosticCode"),
                r.get("status").and_then(Value::as_str),
                r.get("action").and_then(Value::as_str),
            ),
        };
        if !is_address(address) {
            continue;
        }
        let diagnostic = strip_type(diagnostic).to_string();
        let quoted = find_status(&diagnostic);
        out.push(Failure {
            address: address.to_string(),
            status: status.and_then(find_status).or(quoted),
            reply_code: find_reply_code(&diagnostic),
            action: act.map(str::to_ascii_lowercase),
            remote_mta: r.get("remoteMtaIp").and_then(Value::as_str).map(str::to_string),
            command: crate::dsn::find_command(&diagnostic.to_ascii_lowercase()),
            diagnostic,
            diagnostic_type: Some("smtp".to_string()),
            ..Failure::default()
        });
    }
    Some((out, reporting_mta))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn strip_type(v: &str) -> &str {
    match v.split_once(';') {
        Some((t, rest)) if t.len() <= 12 && !t.contains(' ') => rest.trim(),
        _ => v.trim(),
    }
}
