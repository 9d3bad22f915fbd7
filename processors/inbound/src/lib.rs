// Inbound-mail intelligence: reads a raw message and says whether it is a bounce (with reasons per
// recipient), a complaint, an auto-reply or a human reply, with the keys to join it to the send.
#![forbid(unsafe_code)]

pub mod arf;
pub mod dsn;
#[doc(hidden)]
pub mod eval;
mod formats;
mod inspect;
mod keywords;
pub mod mime;
mod providers;
pub mod reasons;
pub mod reply;
mod ses;

use serde::Serialize;

pub use arf::Feedback;
pub use inspect::inspect_json;
pub use reasons::Reason;
pub use reply::Thread;

/// Messages larger than this are refused by [`classify`]; bounces quoting huge attachments
/// carry nothing useful past the first megabytes.
/// (The same as what `POST /v1/inbound` accepts, `mailpipe_schemas::INBOUND_MAX_BYTES`.)
pub const DEFAULT_MAX_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InboundError {
    #[error("message is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("message is empty")]
    Empty,
}

impl InboundError {
    /// Neither error goes away by trying the same bytes again.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Bounce,
    Complaint,
    AutoReply,
    Reply,
    Unknown,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Bounce => "bounce",
            Kind::Complaint => "complaint",
            Kind::AutoReply => "auto_reply",
            Kind::Reply => "reply",
            Kind::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Recipient {
    /// The address the sender wrote (what its send and its suppression know).
    pub address: String,
    /// The mailbox the recipient's system forwarded or expanded `address` to, when the report
    /// names both (`Original-Recipient` and `Final-Recipient`, Sendmail and Postfix's
    /// "(expanded from ...)", Exim's "(generated from ...)").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expanded_to: Option<String>,
    /// Enhanced status code (RFC 3463); an x.0.9xx code when the report gives none.
    pub status: String,
    /// SMTP reply code, empty when the report does not say.
    pub reply_code: String,
    pub reason: Reason,
    pub hard_bounce: bool,
    /// Delivery ended (`true`), or the report is a delay notice and the system still tries.
    pub permanent: bool,
    /// The independent signals that agree with the verdict (`hard_bounce` and `reason`): a
    /// format or provider rule, the status code, the reply code, the wording. Two or more make
    /// a confident verdict (see [`Recipient::confident`]).
    pub signals: Vec<reasons::Signal>,
    pub action: Option<String>,
    pub remote_mta: Option<String>,
    pub diagnostic: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Classification {
    pub kind: Kind,
    /// Failed (or reported) recipients in message order; empty for replies and unknown mail.
    pub recipients: Vec<Recipient>,
    pub feedback: Option<Feedback>,
    /// Message-ID of the original message the report or reply refers to.
    pub original_message_id: Option<String>,
    pub reporting_mta: Option<String>,
    pub thread: Thread,
    /// For auto-replies: the header or wording that marked it automatic.
    pub auto_reply_signal: Option<String>,
}

pub fn classify(raw: &[u8]) -> Result<Classification, InboundError> {
    classify_with_limit(raw, DEFAULT_MAX_BYTES)
}

pub fn classify_with_limit(raw: &[u8], limit: usize) -> Result<Classification, InboundError> {
    if raw.len() > limit {
        return Err(InboundError::TooLarge { size: raw.len(), limit });
    }
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(InboundError::Empty);
    }
    let data = mime::normalize_newlines(raw);
    // Saved copies sometimes begin with blank lines before the header.
    let data = &data[data.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(0)..];
    let mut messages = mbox_messages(data).into_iter();
    let mut c = classify_message(&mime::parse(messages.next().unwrap_or_default()));
    for more in messages {
        let next = classify_message(&mime::parse(more));
        if c.kind == Kind::Bounce && next.kind == Kind::Bounce {
            c.recipients.extend(next.recipients);
        }
    }
    Ok(c)
}

/// An mbox file (it starts with a `From ` envelope line) may hold several reports one after the
/// other; each starts at a blank line, a `From ` line and a header field.
fn mbox_messages(data: &[u8]) -> Vec<&[u8]> {
    if !data.starts_with(b"From ") {
        return vec![data];
    }
    let mut out = Vec::new();
    let (mut start, mut from) = (0, 0);
    while let Some(i) = memchr::memmem::find(&data[from..], b"\nFrom ") {
        let at = from + i + 1;
        // A body line starting with "From " (unescaped by careless writers) is no envelope line:
        // that one carries a time of day and is followed by a header field.
        let mut lines = data[at..].split(|&b| b == b'\n');
        let envelope = lines.next().unwrap_or_default();
        if has_time_of_day(envelope) && is_header_field(lines.next().unwrap_or_default()) {
            out.push(&data[start..at]);
            start = at;
        }
        from = at;
    }
    out.push(&data[start..]);
    out
}

fn has_time_of_day(line: &[u8]) -> bool {
    line.windows(8).any(|w| {
        let d = |i: usize| w[i].is_ascii_digit();
        d(0) && d(1) && w[2] == b':' && d(3) && d(4) && w[5] == b':' && d(6) && d(7)
    })
}

fn is_header_field(line: &[u8]) -> bool {
    let name_len = line.iter().take_while(|&&b| b.is_ascii_graphic() && b != b':').count();
    name_len > 0 && line.get(name_len) == Some(&b':')
}

fn classify_message(msg: &mime::Message) -> Classification {
    let thread = reply::thread(msg);
    let original_message_id = original_message_id(msg);
    let mut c = Classification {
        kind: Kind::Unknown,
        recipients: Vec::new(),
        feedback: None,
        original_message_id,
        reporting_mta: None,
        thread,
        auto_reply_signal: None,
    };
    if let Some(fb) = arf::parse(msg) {
        c.kind = Kind::Complaint;
        c.recipients = complaint_recipients(msg, &fb);
        c.feedback = Some(fb);
        return c;
    }
    if let Some((failures, reporting_mta)) = ses::failures(msg) {
        if !failures.is_empty() {
            let single = failures.len() == 1;
            c.kind = Kind::Bounce;
            c.recipients = failures.into_iter().map(|f| to_recipient(f, single.then_some(""), reporting_mta.as_deref(), false)).collect();
            c.reporting_mta = reporting_mta;
            return c;
        }
    }
    if let Some(failures) = formats::failures(msg) {
        let reporter = msg.headers.get("from").map(dsn::header_addresses).unwrap_or_default();
        let reporter = reporter.first().and_then(|a| a.rsplit_once('@')).map(|(_, d)| d.to_string());
        c.kind = Kind::Bounce;
        c.recipients = failures.into_iter().map(|f| to_recipient(f, None, reporter.as_deref(), false)).collect();
        return c;
    }
    if dsn::looks_like_bounce(msg) {
        let (recipients, reporting_mta) = bounce_recipients(msg);
        // A report that names no recipient is still no reply from the system that wrote it.
        // A challenge-response system holding the message until the sender proves itself wrote
        // it, shaped like a report: the mail was not refused, and nothing failed for good.
        let held = recipients.iter().all(|r| r.status.starts_with('4') || r.address.is_empty()) && reply::challenge(msg);
        if held {
            c.kind = Kind::AutoReply;
            c.auto_reply_signal = Some("challenge-response".into());
            return c;
        }
        if recipients.iter().any(|r| !r.address.is_empty()) || reply::auto_reply_signal(msg).is_none() {
            c.kind = Kind::Bounce;
            c.recipients = recipients;
            c.reporting_mta = reporting_mta;
            return c;
        }
    }
    if let Some(signal) = reply::auto_reply_signal(msg) {
        c.kind = Kind::AutoReply;
        c.auto_reply_signal = Some(signal);
        c.recipients = c
            .thread
            .from_address
            .iter()
            .map(|a| Recipient {
                address: a.clone(),
                expanded_to: None,
                status: String::new(),
                reply_code: String::new(),
                reason: Reason::Vacation,
                hard_bounce: false,
                permanent: false,
                signals: Vec::new(),
                action: None,
                remote_mta: None,
                diagnostic: msg.headers.get("subject").unwrap_or("").to_string(),
            })
            .collect();
        return c;
    }
    if reply::is_reply(msg, &c.thread) {
        c.kind = Kind::Reply;
    }
    c
}

fn complaint_recipients(msg: &mime::Message, fb: &Feedback) -> Vec<Recipient> {
    let mut addrs = fb.original_rcpt_to.clone();
    if addrs.is_empty() {
        if let Some(h) = original_headers(msg) {
            addrs = h.get("to").map(dsn::header_addresses).unwrap_or_default();
            addrs.truncate(1);
        }
    }
    if addrs.is_empty() {
        addrs.push(String::new());
    }
    addrs
        .into_iter()
        .map(|address| Recipient {
            address,
            expanded_to: None,
            status: String::new(),
            reply_code: String::new(),
            reason: Reason::Feedback,
            hard_bounce: false,
            permanent: false,
            signals: vec![reasons::Signal::Format],
            action: None,
            remote_mta: None,
            diagnostic: fb.feedback_type.clone(),
        })
        .collect()
}

fn bounce_recipients(msg: &mime::Message) -> (Vec<Recipient>, Option<String>) {
    let notification = dsn::notification_text(msg);
    let mut exclude: Vec<String> = Vec::new();
    for name in ["to", "from"] {
        exclude.extend(msg.headers.get(name).map(dsn::header_addresses).unwrap_or_default());
    }
    // The envelope sender of the returned original is no failed recipient either.
    for part in &msg.parts {
        let text = part.text.as_str();
        // This runs over every line of the returned message: only line starts that could begin
        // a Return-Path or From field are looked at (found with the vectorised memchr).
        let starts = std::iter::once(0).chain(memchr::memchr_iter(b'\n', text.as_bytes()).map(|i| i + 1));
        for at in starts {
            if !matches!(text.as_bytes().get(at), Some(b'r' | b'R' | b'f' | b'F')) {
                continue;
            }
            let rest = &text[at..];
            let line = &rest[..memchr::memchr(b'\n', rest.as_bytes()).unwrap_or(rest.len())];
            let Some((name, value)) = line.split_once(':') else { continue };
            if name.eq_ignore_ascii_case("return-path") || name.eq_ignore_ascii_case("from") {
                exclude.extend(dsn::header_addresses(value));
            }
        }
    }
    let subject = msg.headers.get("subject").unwrap_or("");
    let delay = dsn::reads_as_delay(&[subject, &notification]);
    let from_text = dsn::from_text(&notification, &exclude);
    let (mut failures, info) = dsn::from_delivery_status(msg);
    // Without a Reporting-MTA field, the report's sender names the system that wrote it.
    let reporter = info.reporting_mta.clone().or_else(|| {
        let from = msg.headers.get("from").map(dsn::header_addresses).unwrap_or_default();
        from.first().and_then(|a| a.rsplit_once('@')).map(|(_, d)| d.to_string())
    });
    if failures.is_empty() {
        failures = from_text.clone();
    } else {
        // The DSN fields are authoritative; the free text fills in what they leave out.
        for f in &mut failures {
            let words = from_text.iter().find(|t| t.address.eq_ignore_ascii_case(&f.address) || t.expanded_to.as_ref().is_some_and(|e| e.eq_ignore_ascii_case(&f.address)));
            // A DSN that gives only the final mailbox: the text names the address it came from.
            if let Some(t) = words.filter(|t| f.expanded_to.is_none() && !t.address.eq_ignore_ascii_case(&f.address)) {
                f.expanded_to = Some(std::mem::replace(&mut f.address, t.address.clone()));
            }
            if f.diagnostic.is_empty() {
                if let Some(t) = words {
                    f.diagnostic = t.diagnostic.clone();
                } else if from_text.len() <= 1 {
                    f.diagnostic = dsn::collapse(&notification);
                }
            }
            f.command = dsn::find_command(&f.diagnostic.to_ascii_lowercase()).or(words.and_then(|t| t.command));
        }
        // A local program's exit status is no SMTP reply; Sendmail's transcript gives the reply
        // it made of it ("554 5.3.0 unknown mailer error 255").
        if let [f] = failures.as_mut_slice() {
            if f.diagnostic_type.as_deref().is_some_and(|t| t.starts_with("x-unix")) {
                f.reply_code = dsn::find_reply_code(&notification);
                if let Some(s) = f.status.as_deref().filter(|s| s.ends_with(".0.0")) {
                    f.status = dsn::find_specific_status(&notification, s).map(|(t, _)| t).filter(|t| t[..1] == s[..1]).or(f.status.take());
                }
            }
        }
    }
    if failures.is_empty() {
        let failed = msg.headers.get("x-failed-recipients").map(dsn::header_addresses).unwrap_or_default();
        failures = failed
            .into_iter()
            .map(|address| dsn::Failure { address, diagnostic: dsn::collapse(&notification), ..Default::default() })
            .collect();
    }
    if failures.is_empty() {
        let from = msg.headers.get("from").map(dsn::header_addresses).unwrap_or_default();
        if let Some((_, domain)) = from.first().and_then(|a| a.rsplit_once('@')) {
            let diagnostic = dsn::collapse(&notification);
            failures = dsn::bare_names(&notification, domain).into_iter().map(|address| dsn::Failure { address, diagnostic: diagnostic.clone(), ..Default::default() }).collect();
        }
    }
    if failures.is_empty() {
        failures = dsn::loose_failures(&notification, &exclude);
    }
    if failures.is_empty() {
        // "DELIVERY FAILURE: User foo (foo@example.com) not listed": the subject names it.
        let named = msg.headers.get("subject").map(|s| dsn::loose_failures(s, &exclude)).unwrap_or_default();
        failures = named.into_iter().map(|f| dsn::Failure { diagnostic: dsn::collapse(&format!("{subject}\n{notification}")), ..f }).collect();
    }
    if failures.is_empty() {
        if let Some(address) = dsn::original_recipient(msg) {
            let diagnostic = dsn::collapse(&notification);
            let f = dsn::Failure { address, command: dsn::find_command(&diagnostic.to_ascii_lowercase()), diagnostic, ..Default::default() };
            let mut r = to_recipient(f, Some(&notification), reporter.as_deref(), delay);
            // Named only by the returned copy: the report says nothing that holds for it.
            if r.reason == Reason::OnHold {
                r.reason = Reason::Undefined;
                r.status = reasons::pseudo_status(Reason::Undefined, r.status.starts_with('4'));
            }
            return (vec![r], info.reporting_mta);
        }
    }
    if failures.is_empty() {
        // A report that names nobody still says why: one recipient without an address carries
        // it (no event is made of it, see `mailpipe_processors::inbound`).
        failures.push(dsn::Failure { diagnostic: dsn::collapse(&notification), ..Default::default() });
    }
    if formats::is_qmail(msg) {
        for f in &mut failures {
            f.reason = f.reason.or_else(|| formats::qmail_local_error(f));
        }
    }
    let single = failures.len() == 1;
    let recipients = failures
        .into_iter()
        .map(|f| to_recipient(f, single.then_some(notification.as_str()), reporter.as_deref(), delay))
        .collect();
    (recipients, info.reporting_mta)
}

/// `delay`: the report as a whole reads as a delay notice (its DSN action, where it has one,
/// decides for the recipient).
fn to_recipient(f: dsn::Failure, notification: Option<&str>, reporter: Option<&str>, delay: bool) -> Recipient {
    // A generic x.0.0 or x.1.0 in the DSN field, or the reporter's own x.4.7 "delivery time
    // expired" summary, loses to the specific code quoted from the remote server (the cause of
    // the last attempt); the words from that code on are the remote server's, the ones before it
    // a summary, and the reply code written just before it goes with it.
    let (status, words_from) = match &f.status {
        Some(s) if s.ends_with(".0.0") || s.ends_with(".1.0") || s.ends_with(".4.7") => {
            match dsn::find_specific_status(&f.diagnostic, s) {
                Some((t, at)) if t.starts_with(&s[..1]) => (Some(t), at),
                _ => (Some(s.clone()), 0),
            }
        }
        Some(s) => (Some(s.clone()), 0),
        None => (dsn::find_failure_status(&f.diagnostic).or_else(|| dsn::find_status(&f.diagnostic)), 0),
    };
    let paired = (words_from > 0).then(|| dsn::reply_code_before(&f.diagnostic, words_from)).flatten();
    let reply_code = paired.or(f.reply_code.clone()).or_else(|| dsn::find_reply_code(&f.diagnostic));
    let mut lower = f.diagnostic[words_from..].to_lowercase();
    // The comment of the Status field is the reporting MTA's own reading of the code.
    if !f.status_comment.is_empty() {
        lower = format!("{} {lower}", f.status_comment.to_lowercase());
    }
    let decide = |text: &str| {
        reasons::decide(&reasons::Evidence {
            text,
            status: status.as_deref(),
            reply_code: reply_code.as_deref(),
            action: f.action.as_deref(),
            command: f.command,
            diagnostic_type: f.diagnostic_type.as_deref(),
            reporter,
            remote: f.remote_mta.as_deref(),
        })
    };
    let mut decision = f.reason.map_or_else(|| decide(&lower), |reason| reasons::Decision { reason, format_rule: true, wording: None });
    let mut reason = decision.reason;
    // Nothing specific in the recipient's own lines: the report's preface may say more.
    if matches!(reason, Reason::OnHold | Reason::Undefined) {
        if let Some(n) = notification {
            lower = n.to_lowercase();
            decision = decide(&lower);
            reason = decision.reason;
        }
    }
    // A report that only lists the recipient under its introduction gives no cause at all.
    if reason == Reason::OnHold && f.status_comment.is_empty() && notification.is_some_and(|n| only_lists(n, &f.diagnostic, &f.address)) {
        reason = Reason::Undefined;
    }
    let permanent = match f.action.as_deref() {
        Some("failed") => true,
        Some("delayed" | "relayed" | "delivered" | "expanded") => false,
        _ => !delay && !dsn::reads_as_delay(&[&lower]),
    };
    let temporary = status.as_deref().map_or_else(
        || {
            !permanent
                || reply_code.as_deref().is_some_and(|c| c.starts_with('4'))
                || ["temporary failure", "will be retried", "temporary error", "temporarily"].iter().any(|w| lower.contains(w))
        },
        |s| s.starts_with('4'),
    );
    let pseudo = status.is_none();
    let status = status.unwrap_or_else(|| reasons::pseudo_status(reason, temporary));
    // A reply code of the other class (554 quoted in a 4.x.x report) belongs to another attempt.
    let reply_code = reply_code.filter(|c| !matches!((c.as_bytes().first(), status.as_bytes().first()), (Some(b'4'), Some(b'5')) | (Some(b'5'), Some(b'4'))));
    let hard_bounce = permanent && reason.is_hard(&status);
    let signals = reasons::signals(
        &reasons::Evidence {
            text: &lower,
            status: Some(status.as_str()),
            reply_code: reply_code.as_deref().filter(|c| !c.is_empty()),
            action: f.action.as_deref(),
            command: f.command,
            diagnostic_type: f.diagnostic_type.as_deref(),
            reporter,
            remote: f.remote_mta.as_deref(),
        },
        &decision,
        hard_bounce,
        pseudo,
    );
    Recipient {
        hard_bounce,
        permanent,
        signals,
        address: f.address,
        expanded_to: f.expanded_to,
        status,
        reply_code: reply_code.unwrap_or_default(),
        reason,
        action: f.action,
        remote_mta: f.remote_mta,
        diagnostic: f.diagnostic,
    }
}

/// Whether the report names the address under a line that introduces the list ("Delivery to the
/// following recipients failed permanently:") and says nothing else of it.
fn only_lists(notification: &str, diagnostic: &str, address: &str) -> bool {
    let Some(at) = notification.find(address) else { return false };
    let before = notification[..at].trim_end_matches(|c: char| c.is_whitespace() || matches!(c, '*' | '-' | '<' | '"'));
    let after = &notification[at + address.len()..];
    before.ends_with(':') && !after.contains(char::is_alphanumeric) && !diagnostic.replace(address, "").contains(char::is_alphanumeric)
}

impl Recipient {
    /// Two or more independent signals agree with the verdict: what the suppression list asks
    /// of a hard bounce before it suppresses for good.
    pub fn confident(&self) -> bool {
        self.signals.len() >= 2
    }
}

fn original_part(msg: &mime::Message) -> Option<&mime::Part> {
    msg.parts.iter().find(|p| {
        matches!(p.content_type.as_str(), "message/rfc822" | "text/rfc822-headers" | "message/rfc822-headers")
    })
}

fn original_headers(msg: &mime::Message) -> Option<mime::Headers> {
    Some(mime::split_headers(original_part(msg)?.text.trim_start().as_bytes()).0)
}

/// One field of a header block, read without parsing the others (unfolded, not decoded).
fn header_field(block: &str, name: &str) -> Option<String> {
    let mut lines = block.lines();
    while let Some(line) = lines.next() {
        if line.is_empty() {
            return None;
        }
        // A line that is no field ends a broken header block, as in mime::split_headers.
        let Some((n, v)) = line.split_once(':') else { return None };
        if n.eq_ignore_ascii_case(name) {
            let mut value = v.trim().to_string();
            for more in lines.by_ref().take_while(|l| l.starts_with([' ', '\t'])) {
                value.push(' ');
                value.push_str(more.trim());
            }
            return Some(value);
        }
    }
    None
}

fn original_message_id(msg: &mime::Message) -> Option<String> {
    let from_part = original_part(msg).and_then(|p| header_field(p.text.trim_start(), "message-id"));
    let id = from_part.or_else(|| {
        // Reports without MIME structure paste the original below the notification.
        msg.parts.iter().filter(|p| p.content_type.starts_with("text/")).find_map(|p| {
            p.text.lines().find_map(|l| {
                if !matches!(l.as_bytes().first(), Some(b'm' | b'M')) {
                    return None;
                }
                let (name, value) = l.split_once(':')?;
                name.trim().eq_ignore_ascii_case("message-id").then(|| value.to_string())
            })
        })
    })?;
    let id = id.trim();
    let id = match (id.find('<'), id.rfind('>')) {
        (Some(a), Some(b)) if a < b => &id[a + 1..b],
        _ => id,
    };
    (!id.is_empty()).then(|| id.to_string())
}
