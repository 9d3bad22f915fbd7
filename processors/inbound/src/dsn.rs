// Finds the failed recipients of a bounce: RFC 3464 delivery-status fields when present, otherwise
// the free-text layouts MTAs use (an address on its own line followed by the remote server's words).

use crate::mime::{split_headers, Message};

/// Longest diagnostic kept per recipient; reports quoting whole sessions are cut here.
const MAX_DIAGNOSTIC: usize = 2000;

#[derive(Debug, Clone, Default)]
pub struct Failure {
    pub address: String,
    /// The mailbox `address` was expanded or forwarded to, when the report names both.
    pub expanded_to: Option<String>,
    pub status: Option<String>,
    pub reply_code: Option<String>,
    pub action: Option<String>,
    pub remote_mta: Option<String>,
    /// The remote server's words or the reporting MTA's explanation, whitespace collapsed.
    pub diagnostic: String,
    /// SMTP command after which the failure happened, when the report says.
    pub command: Option<&'static str>,
    /// Type of the Diagnostic-Code field (`smtp`, `x-unix`, ...), lowercased.
    pub diagnostic_type: Option<String>,
    /// The reporting MTA's own words on the code: the comment of the Status field
    /// (`Status: 4.0.0 (host name lookup failure)`).
    pub status_comment: String,
    /// The reason a report format states outright (a mailing list manager's notice).
    pub reason: Option<crate::reasons::Reason>,
}

/// Per-message fields of a delivery-status report.
#[derive(Debug, Clone, Default)]
pub struct ReportInfo {
    pub reporting_mta: Option<String>,
    pub arrival_date: Option<String>,
}

/// Phrases in the subject of bounces, lowercased.
const BOUNCE_SUBJECTS: &[&str] = &[
    "undeliver", "undelivered", "delivery status notification", "delivery failure", "delivery failed",
    "failure notice", "returned mail", "mail delivery failed", "delivery has failed", "non remis",
    "nondeliverable", "non-deliverable", "not delivered", "could not be delivered", "delivery problem",
    "mail failure", "delivery notification", "delivery report", "returned to sender", "failed delivery",
    "warning: could not send", "unzustellbar", "non recapitabile", "no se puede entregar", "onbestelbaar",
    "message delivery has failed", "delivery incomplete", "mail system error", "bounce",
    "delayed mail", "delivery delayed", "mail could not be delivered", "permanent error",
    "unable to deliver", "delivery final failure", "error sending message", "rejected:",
    "non-delivery", "delivery warning", "failed mail", "message delayed",
];

const BOUNCE_SENDERS: &[&str] = &["mailer-daemon", "postmaster", "mail delivery", "mail-daemon", "mailerdaemon", "mdaemon"];

/// Whether the message reports a delivery outcome (as opposed to a reply or a complaint).
pub fn looks_like_bounce(msg: &Message) -> bool {
    if msg.report_type == "delivery-status" || msg.parts.iter().any(|p| p.content_type == "message/delivery-status") {
        return true;
    }
    if msg.headers.get("x-failed-recipients").is_some() {
        return true;
    }
    let from = msg.headers.get("from").unwrap_or("").to_ascii_lowercase();
    let subject = msg.headers.get("subject").unwrap_or("").to_lowercase();
    let sender_says = BOUNCE_SENDERS.iter().any(|s| from.contains(s)) || from.trim() == "<>";
    let subject_says = crate::phrases!(BOUNCE_SUBJECTS).any_in(&subject);
    if sender_says && subject_says {
        return true;
    }
    // One sign alone is enough only if the body also reads like a failure report; with no sign
    // at all, the report must say so plainly and return the original message.
    let returns_original = || msg.parts.iter().any(|p| p.content_type == "message/rfc822" || p.content_type == "text/rfc822-headers");
    if !(sender_says || subject_says || returns_original()) {
        return false;
    }
    // A mail system's own address that returns the original is a report whatever its language.
    if sender_says && returns_original() {
        return true;
    }
    let text = notification_text(msg).to_lowercase();
    // ... or that states a cause of failure in words the reasons know ("not a valid user").
    if sender_says && (crate::phrases!(SYSTEM_FAILURE_WORDS).any_in(&text) || crate::phrases!(SYSTEM_FAILURE_WORDS).any_in(&subject) || crate::keywords::match_text(&text, None).is_some()) {
        return true;
    }
    if sender_says || subject_says {
        return crate::phrases!(FAILURE_WORDS).any_in(&text);
    }
    crate::phrases!(PLAIN_FAILURE_WORDS).any_in(&text)
}

/// Words of a delay notice: the system still tries, nothing has failed for good yet.
const DELAY_WORDS: &[&str] = &[
    "not yet been delivered", "will continue to try", "will continue to attempt", "attempts will continue",
    "will be retried", "will retry", "still trying", "just a warning", "advisory-only", "has been postponed",
    "delivery delayed", "message delayed", "delivery has been delayed", "no action is required", "warning: message",
];

/// Words that say the system gave up, which outweigh the delay words quoted with them.
const GAVE_UP_WORDS: &[&str] = &["giving up", "gave up", "not going to try again", "retry timeout exceeded", "will not be retried", "no further attempts"];

/// Whether a report (its subject, its text: any case) is a delay notice rather than a failure.
pub fn reads_as_delay(texts: &[&str]) -> bool {
    texts.iter().any(|t| crate::phrases!(DELAY_WORDS).any_in(t)) && !texts.iter().any(|t| crate::phrases!(GAVE_UP_WORDS).any_in(t))
}

/// From a mail system's own address (mailer-daemon, postmaster), any of these says failure.
const SYSTEM_FAILURE_WORDS: &[&str] = &["error", "fail", "returned", "reject", "undeliver", "not delivered", "unknown", "quota", "delay"];

/// Statements that a message failed, specific enough to stand without a bounce sender or subject.
const PLAIN_FAILURE_WORDS: &[&str] = &[
    "could not be delivered to", "was not delivered to", "delivery to the following recipients failed",
    "undeliverable to", "permanent fatal errors", "had permanent delivery errors", "no such user",
    "user unknown", "unknown user", "mailbox unavailable", "failed recipient",
];

/// The first recipient named by the returned copy of the original message (its To header), for
/// reports that name the failed recipient nowhere else.
pub fn original_recipient(msg: &Message) -> Option<String> {
    for part in &msg.parts {
        let body = match part.content_type.as_str() {
            "message/rfc822" | "text/rfc822-headers" | "message/rfc822-headers" => part.text.as_str(),
            ct if ct.starts_with("text/plain") => {
                let cut = cut_at_original(&part.text).len();
                if cut == part.text.len() {
                    continue;
                }
                &part.text[cut..]
            }
            _ => continue,
        };
        for line in body.lines().take(200) {
            let Some((name, value)) = line.split_once(':') else { continue };
            if name.trim().eq_ignore_ascii_case("to") {
                if let Some(a) = header_addresses(value).into_iter().next() {
                    return Some(a);
                }
            }
        }
    }
    None
}

const FAILURE_WORDS: &[&str] = &[
    "could not be delivered", "was not delivered", "permanent error", "undeliverable", "delivery failed",
    "failed permanently", "unable to deliver", "did not reach", "delivery to the following",
    "following address", "following recipient", "couldn't be delivered", "delivery has failed",
    "not be delivered", "remote host said", "error from remote", "transcript of session",
    "user unknown", "failure reasons", "could not deliver", "attempting to deliver",
    "delivery report unavailable", "cannot send message", "failed recipient", "mailbox unavailable",
    "requested action not taken", "no such user", "rejected your message", "was undeliverable",
    "remote server returned", "message bounced", "following email address", "following user",
    "has not yet been delivered", "delivery attempts will continue", "could not be sent",
];

/// The human-readable report: text parts before the returned message, cut at the point where
/// a copy of the original message begins.
pub fn notification_text(msg: &Message) -> String {
    let mut out = String::new();
    for part in &msg.parts {
        match part.content_type.as_str() {
            "message/rfc822" | "text/rfc822-headers" | "message/rfc822-headers" => break,
            "message/delivery-status" | "message/feedback-report" => continue,
            // An unsplittable multipart (no delimiter found) is read as the text it is.
            ct if ct.starts_with("text/plain") || ct == "text" || ct.starts_with("multipart/") => {
                out.push_str(cut_at_original(&part.text));
                out.push('\n');
            }
            // A plain part that is only a signature or a blank stands for the HTML one.
            "text/html" if out.split_whitespace().map(str::len).sum::<usize>() < 80 => {
                out.push_str(&strip_html(cut_at_original(&part.text)));
                out.push('\n');
            }
            _ => {}
        }
    }
    out
}

fn strip_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_tag = false;
    for ch in s.chars() {
        match ch {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(ch),
            _ => {}
        }
    }
    out.replace("&nbsp;", " ").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// Cuts at the first line that starts the returned copy of the original message.
fn cut_at_original(text: &str) -> &str {
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        // Lowercasing every line is the hot spot of this scan; only candidate lines need it.
        let candidate = t.len() > 8
            && matches!(t.as_bytes()[0], b'-' | b'=' | b'*' | b'o' | b'O' | b'm' | b'M');
        let l = if candidate { t.to_ascii_lowercase() } else { String::new() };
        let marker = (l.starts_with("---") || l.starts_with("===") || l.starts_with("***"))
            && (l.contains("original message")
                || l.contains("copy of the message")
                || l.contains("below this line")
                || l.contains("returned message")
                || l.contains("unsent message")
                || l.contains("message header")
                || l.contains("original mail")
                || l.contains("headers of the original"));
        let header_start = line.starts_with("Return-Path:")
            || line.starts_with("Return-path:")
            || line.starts_with("Received:")
            || line.starts_with("Message-ID:")
            || line.starts_with("Message-Id:")
            || line.starts_with("DKIM-Signature:")
            || line.starts_with("X-Received:");
        let phrase = (l.starts_with("original message") && (l.ends_with(':') || l.contains("follow")))
            || l == "original message headers:"
            || l.starts_with("message headers follow")
            || l == "original message:";
        if marker || header_start || phrase {
            return &text[..pos];
        }
        pos += line.len();
    }
    text
}

/// Reads recipients from message/delivery-status parts (or DSN fields pasted into plain text).
pub fn from_delivery_status(msg: &Message) -> (Vec<Failure>, ReportInfo) {
    let mut out = Vec::new();
    let mut info = ReportInfo::default();
    for part in &msg.parts {
        if part.content_type == "message/delivery-status" {
            parse_fields(&part.text, &mut out, &mut info);
        }
    }
    if out.is_empty() {
        // Text parts carrying pasted DSN fields, then a report forwarded inside message/rfc822.
        let pasted = msg.parts.iter().filter(|p| p.content_type.starts_with("text/") || p.content_type.starts_with("multipart/"));
        let nested = msg.parts.iter().filter(|p| p.content_type == "message/rfc822");
        for part in pasted.chain(nested) {
            if !out.is_empty() {
                break;
            }
            if let Some(i) = find_ci(&part.text, "\nfinal-recipient:") {
                parse_fields(&part.text[i + 1..], &mut out, &mut info);
            }
        }
    }
    (out, info)
}

/// Case-insensitive search for a needle that starts with a newline.
fn find_ci(hay: &str, needle: &str) -> Option<usize> {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    memchr::memchr_iter(n[0], h).find(|&i| h.get(i..i + n.len()).is_some_and(|w| w.eq_ignore_ascii_case(n)))
}

fn parse_fields(text: &str, out: &mut Vec<Failure>, info: &mut ReportInfo) {
    // Some reports put the per-recipient groups inside a nested header-like block that is
    // folded; unfold by reusing the header parser on each paragraph.
    for block in text.split("\n\n") {
        // Groups parted by more than one blank line: the block starts with the extra ones.
        let (headers, _) = split_headers(block.trim_start_matches('\n').as_bytes());
        let mut cur: Option<Failure> = None;
        // Fields met before the block names its recipient (some MTAs list Final-Recipient last).
        let mut early = Failure::default();
        let (mut has_final, mut has_original) = (false, false);
        for h in &headers.0 {
            let v = h.value.trim();
            let target = match cur.as_mut() {
                Some(f) => f,
                None => &mut early,
            };
            match h.name.as_str() {
                "reporting-mta" => info.reporting_mta = Some(strip_type(v).to_string()),
                "arrival-date" => info.arrival_date = Some(v.to_string()),
                "final-recipient" | "original-recipient" | "x-actual-recipient" => {
                    let addr = clean_address(strip_type(v));
                    if addr.is_empty() {
                        continue;
                    }
                    let is_final = h.name == "final-recipient";
                    let is_original = h.name == "original-recipient";
                    // Original-Recipient may come first in a group; a second Final-Recipient or
                    // a second Original-Recipient starts the next group.
                    let starts_new = match &cur {
                        None => true,
                        Some(f) => (is_final && has_final && f.address != addr) || (is_original && has_original),
                    };
                    has_original = is_original || (has_original && !starts_new);
                    if starts_new {
                        if let Some(f) = cur.take() {
                            out.push(f);
                        }
                        let first = std::mem::take(&mut early);
                        cur = Some(Failure { address: addr, ..first });
                        has_final = is_final;
                    } else if let Some(f) = cur.as_mut() {
                        // The address the sender wrote (Original-Recipient) is the one its send and
                        // its suppression know; the final one only replaces it when it is no
                        // internet address (X.400, a local mailbox name).
                        let better = is_address(&addr) && (is_original || !is_address(&f.address));
                        let (kept, other) = if better || f.address.is_empty() { (addr, std::mem::take(&mut f.address)) } else { (f.address.clone(), addr) };
                        // The other address of the group is the mailbox the written one reached.
                        if is_address(&other) && !other.eq_ignore_ascii_case(&kept) && f.expanded_to.is_none() {
                            f.expanded_to = Some(other);
                        }
                        f.address = kept;
                        has_final |= is_final;
                    }
                }
                "action" => target.action = Some(v.to_ascii_lowercase()),
                "status" => {
                    target.status = find_status(v);
                    target.status_comment = status_comment(v).to_string();
                }
                "remote-mta" => target.remote_mta = Some(strip_type(v).to_string()),
                "diagnostic-code" => {
                    target.diagnostic = collapse(strip_type(v));
                    target.diagnostic_type = v.split_once(';').map(|(t, _)| t.trim().to_ascii_lowercase());
                }
                _ => {}
            }
        }
        if let Some(f) = cur.take() {
            out.push(f);
        }
    }
    out.retain(|f| !f.address.is_empty());
}

/// The comment after the code in a Status field: `5.2.1 (mailbox disabled)` gives `mailbox disabled`.
fn status_comment(v: &str) -> &str {
    match (v.find('('), v.rfind(')')) {
        (Some(a), Some(b)) if a < b => v[a + 1..b].trim(),
        _ => "",
    }
}

/// Drops the `rfc822;` / `smtp;` / `dns;` type prefix of a DSN field value.
fn strip_type(v: &str) -> &str {
    match v.split_once(';') {
        Some((t, rest)) if t.len() <= 12 && !t.contains(' ') && !t.contains('@') => rest.trim(),
        _ => v.trim(),
    }
}

pub fn clean_address(s: &str) -> String {
    let s = s.trim();
    let s = match (s.find('<'), s.rfind('>')) {
        (Some(a), Some(b)) if a < b => &s[a + 1..b],
        _ => s,
    };
    let s = s.strip_prefix("mailto:").unwrap_or(s);
    s.trim_matches(|c: char| c == '"' || c == '\'' || c.is_whitespace() || c == ':' || c == ',' || c == '.')
        .to_string()
}

pub fn collapse(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_DIAGNOSTIC));
    for w in s.split_whitespace() {
        if out.len() >= MAX_DIAGNOSTIC {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
    }
    out
}

/// The first RFC 3463 code (`4.2.2`, `5.7.509`) in the text.
pub fn find_status(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let boundary_before = i == 0 || !(b[i - 1].is_ascii_digit() || b[i - 1] == b'.');
        if matches!(c, b'2' | b'4' | b'5') && boundary_before && b.get(i + 1) == Some(&b'.') {
            let (d1, j) = digits(b, i + 2);
            if (1..=3).contains(&d1) && b.get(j) == Some(&b'.') {
                let (d2, k) = digits(b, j + 1);
                let after_ok = b.get(k).is_none_or(|&x| !(x.is_ascii_digit() || (x == b'.' && b.get(k + 1).is_some_and(u8::is_ascii_digit))));
                if (1..=3).contains(&d2) && after_ok {
                    return Some(text[i..k].to_string());
                }
            }
        }
        i += 1;
    }
    None
}

/// The first code of a failure (4.x.x or 5.x.x) in the text: transcripts quote 2.x.x replies to
/// the commands that went well before the one that failed.
pub fn find_failure_status(text: &str) -> Option<String> {
    let mut from = 0;
    while let Some(s) = find_status(&text[from..]) {
        if !s.starts_with('2') {
            return Some(s);
        }
        from += text[from..].find(s.as_str()).unwrap_or(0) + s.len();
    }
    None
}

/// The most specific code quoted in the text, with its byte offset: the first one that is not
/// generic (x.0.0, x.1.0) nor `other` itself, else the first that differs from `other`.
pub fn find_specific_status(text: &str, other: &str) -> Option<(String, usize)> {
    let mut from = 0;
    let mut fallback = None;
    while let Some(s) = find_status(&text[from..]) {
        let at = from + text[from..].find(s.as_str()).unwrap_or(0);
        if !(s.ends_with(".0.0") || s.ends_with(".1.0") || s == other) {
            return Some((s, at));
        }
        if fallback.is_none() && s != other {
            fallback = Some((s.clone(), at));
        }
        from = at + s.len();
    }
    fallback
}

fn digits(b: &[u8], from: usize) -> (usize, usize) {
    let mut j = from;
    while j < b.len() && b[j].is_ascii_digit() {
        j += 1;
    }
    (j - from, j)
}

/// The first SMTP reply code (`550`, `421-`) standing as its own token.
pub fn find_reply_code(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut success = None;
    for i in 0..b.len().saturating_sub(2) {
        // RFC 5321 4.2: the second digit of a reply code is 0 to 5.
        if !matches!(b[i], b'2' | b'4' | b'5') || !(b'0'..=b'5').contains(&b[i + 1]) || !b[i + 2].is_ascii_digit() {
            continue;
        }
        let before_ok = i == 0 || matches!(b[i - 1], b' ' | b'\t' | b'(' | b':' | b'\n' | b'[' | b'"' | b'#');
        let after_ok = b.get(i + 3).is_none_or(|&c| matches!(c, b' ' | b'-' | b'\n' | b')' | b']' | b'"' | b':' | b','));
        if before_ok && after_ok && is_reply_code(&b[i..i + 3]) {
            let code = &text[i..i + 3];
            // A 2xx greeting or "250 ok" in a transcript is not the failure; a 2xx reply with a
            // 2.x.x code is kept only for reports of success.
            if !code.starts_with('2') {
                return Some(code.to_string());
            }
            if success.is_none() && b.get(i + 4).is_some_and(|&c| c == b'2') {
                success = Some(code);
            }
        }
    }
    success.map(str::to_string)
}

/// The reply code standing right before byte `at` of the text (`421 4.4.2` gives 421 for the
/// code at 4.4.2).
pub fn reply_code_before(text: &str, at: usize) -> Option<String> {
    let head = text.get(..at)?.trim_end();
    let token = head.rsplit(|c: char| c.is_whitespace() || matches!(c, '<' | '(' | '[' | ':')).next()?;
    (token.len() == 3).then(|| find_reply_code(token)).flatten()
}

/// Reply codes the SMTP standards define (RFC 5321, with AUTH, STARTTLS, ETRN and null MX); a
/// number such as "542" in a reply is a local message number, not a code.
fn is_reply_code(c: &[u8]) -> bool {
    const CODES: &[&[u8]] = &[
        b"211", b"214", b"220", b"221", b"235", b"250", b"251", b"252", b"421", b"432", b"450", b"451",
        b"452", b"453", b"454", b"455", b"458", b"459", b"500", b"501", b"502", b"503", b"504", b"521",
        b"523", b"524", b"525", b"530", b"534", b"535", b"538", b"550", b"551", b"552", b"553", b"554",
        b"555", b"556",
    ];
    CODES.contains(&c)
}

/// The SMTP command a diagnostic says the failure followed.
pub fn find_command(lower: &str) -> Option<&'static str> {
    const TABLE: &[(&str, &str)] = &[
        ("rcpt to", "RCPT"),
        ("rcpt command", "RCPT"),
        ("rcpt_to", "RCPT"),
        ("smtp:rcpt", "RCPT"),
        ("after rcpt", "RCPT"),
        ("mail from", "MAIL"),
        ("end of data", "DATA"),
        ("after data", "DATA"),
        ("data command", "DATA"),
        ("after initial connection", "CONN"),
        ("my name was rejected", "HELO"),
        ("helo", "HELO"),
        ("ehlo", "EHLO"),
    ];
    TABLE.iter().find(|(k, _)| lower.contains(k)).map(|(_, c)| *c)
}

/// How a line names a recipient.
#[derive(Clone, Copy, PartialEq)]
enum LineKind {
    /// The address leads the line: its explanation follows on the next lines.
    Leading,
    /// `550 <addr>... reason` summary lines of Sendmail: the explanation came before.
    Summary,
}

/// Extracts recipients from a free-text report.
pub fn from_text(text: &str, exclude: &[String]) -> Vec<Failure> {
    let lines: Vec<&str> = text.lines().collect();
    let mut hits: Vec<(usize, String, LineKind)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some((addr, kind)) = recipient_on_line(line) {
            hits.push((i, addr, kind));
        }
    }
    // The sender's own address is quoted in many reports; drop it unless it is all there is
    // (anonymized samples sometimes use one address for everybody).
    let kept: Vec<_> = hits.iter().filter(|(_, a, _)| !exclude.iter().any(|e| e.eq_ignore_ascii_case(a))).cloned().collect();
    if !kept.is_empty() {
        hits = kept;
    }
    let mut out: Vec<(Failure, String)> = Vec::new();
    for (n, (i, addr, kind)) in hits.iter().enumerate() {
        let start = match kind {
            LineKind::Leading => *i,
            LineKind::Summary => if n == 0 { 0 } else { hits[n - 1].0 + 1 },
        };
        let end = match kind {
            LineKind::Summary => i + 1,
            LineKind::Leading => hits[n + 1..]
                .iter()
                .find(|(_, a, _)| !a.eq_ignore_ascii_case(addr))
                .map_or(lines.len(), |(j, _, _)| *j),
        };
        let block = lines[start.min(end)..end].join("\n");
        let own_line = lines[*i];
        let known = |f: &Failure| f.address.eq_ignore_ascii_case(addr) || f.expanded_to.as_ref().is_some_and(|e| e.eq_ignore_ascii_case(addr));
        match out.iter_mut().find(|(f, _)| known(f)) {
            Some((_, b)) => {
                if !b.contains(&block) {
                    b.push('\n');
                    b.push_str(&block);
                }
            }
            None => {
                // "a@final (expanded from <a@written>)", Exim's "(generated from ...)" on the
                // next line: the sender wrote the second one.
                let written = expanded_from(own_line).or_else(|| lines.get(i + 1).and_then(|l| expanded_from(l))).filter(|w| !w.eq_ignore_ascii_case(addr));
                let mut f = match written {
                    Some(w) => Failure { address: w, expanded_to: Some(addr.clone()), ..Failure::default() },
                    None => Failure { address: addr.clone(), ..Failure::default() },
                };
                // "554 <addr>... 550 Host unknown": the code after the dots is the remote's.
                f.reply_code = match own_line.split_once("... ") {
                    Some((_, said)) if *kind == LineKind::Summary && said.as_bytes().first().is_some_and(u8::is_ascii_digit) => find_reply_code(said),
                    _ => None,
                };
                if *kind == LineKind::Summary && f.reply_code.is_none() {
                    f.reply_code = find_reply_code(own_line);
                }
                out.push((f, block));
            }
        }
    }
    finish(out)
}

/// The address in "(expanded from: a@b)", "(expanded from <a@b>)", "(generated from a@b)",
/// "(ultimately generated from a@b)" on a line.
fn expanded_from(line: &str) -> Option<String> {
    let lower = line.to_ascii_lowercase();
    let at = ["(expanded from", "generated from"].iter().find_map(|m| lower.find(m).map(|p| p + m.len()))?;
    let rest = &line[at..];
    let addr = clean_address(&rest[..rest.find(')')?]);
    is_address(&addr).then_some(addr)
}

/// Every address the text mentions (but the sender's own, unless it is all there is), for
/// reports that name recipients in no layout `from_text` knows; each gets the whole text.
pub fn loose_failures(text: &str, exclude: &[String]) -> Vec<Failure> {
    finish(loose_addresses(text, exclude).into_iter().map(|address| (Failure { address, ..Failure::default() }, text.to_string())).collect())
}

fn finish(out: Vec<(Failure, String)>) -> Vec<Failure> {
    out.into_iter()
        .map(|(mut f, block)| {
            f.status = find_failure_status(&block);
            if f.reply_code.is_none() {
                f.reply_code = find_reply_code(&block);
            }
            f.diagnostic = collapse(&block);
            // Collapsed first: "(in reply to RCPT\n TO command)" is often folded.
            f.command = find_command(&f.diagnostic.to_ascii_lowercase());
            f
        })
        .collect()
}

fn recipient_on_line(line: &str) -> Option<(String, LineKind)> {
    let t = line.trim();
    // Every layout below names an address; most lines of a report name none.
    if t.starts_with("<<<") || memchr::memchr(b'@', t.as_bytes()).is_none() {
        return None;
    }
    let lower_start: String = t.chars().take(24).collect::<String>().to_ascii_lowercase();
    if lower_start.starts_with("message-id:") || lower_start.starts_with("in-reply-to:") || lower_start.starts_with("references:") {
        return None;
    }
    for prefix in [">>> rcpt to:", "rcpt to:", "final-recipient:", "original-recipient:"] {
        if lower_start.starts_with(prefix) {
            let rest = &t[prefix.len()..];
            let addr = first_address(strip_type(rest))?;
            return Some((addr, LineKind::Leading));
        }
    }
    // Sendmail: "550 <user@host>... User unknown"
    if t.len() > 5 && t.as_bytes()[..3].iter().all(u8::is_ascii_digit) && t.as_bytes()[3] == b' ' {
        let rest = &t[4..];
        if rest.starts_with('<') {
            let close = rest.find('>')?;
            if rest[close + 1..].starts_with("...") {
                let addr = clean_address(&rest[..=close]);
                return is_address(&addr).then_some((addr, LineKind::Summary));
            }
        }
        return None;
    }
    let t = t.trim_start_matches(|c: char| matches!(c, '>' | '*' | '-' | '\u{2022}' | '#')).trim_start();
    // Also in a quoted copy of the original (">Return-Path: <sender>").
    let quoted_start = t.get(..t.len().min(16)).unwrap_or("").to_ascii_lowercase();
    for header in ["to:", "from:", "cc:", "sender:", "reply-to:", "return-path:", "mail from:", ">>> mail from:"] {
        if lower_start.starts_with(header) || quoted_start.starts_with(header) {
            return None;
        }
    }
    // "Unknown user: someone@example.com"
    if let Some((head, tail)) = t.rsplit_once(": ") {
        if head.len() < 60 && !tail.contains(' ') {
            let addr = clean_address(tail);
            if is_address(&addr) {
                return Some((addr, LineKind::Leading));
            }
        }
    }
    let first = t.split(|c: char| c.is_whitespace() || c == ',').next()?;
    let addr = clean_address(first.trim_end_matches("..."));
    if !is_address(&addr) {
        return None;
    }
    // A sentence that merely starts with an address ("x@y wrote:") names no failed recipient.
    let rest = t[first.len()..].trim_start().to_ascii_lowercase();
    if rest.starts_with("wrote") || rest.starts_with("schrieb") || rest.starts_with("a écrit") {
        return None;
    }
    Some((addr, LineKind::Leading))
}

/// Recipients named by their local part alone (AOL's screen names) in the list under a line
/// that introduces the failed recipients; they belong to the reporting system's `domain`.
pub fn bare_names(text: &str, domain: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_list = false;
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let l = t.to_ascii_lowercase();
        if l.ends_with(':') && (l.contains("recipient") || l.contains("address")) {
            in_list = true;
            continue;
        }
        let name = in_list && line.starts_with([' ', '\t']) && t.len() <= 64 && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'));
        if !name {
            if in_list && !out.is_empty() {
                break;
            }
            in_list = false;
            continue;
        }
        let address = format!("{t}@{domain}").to_ascii_lowercase();
        if is_address(&address) {
            out.push(address);
        }
    }
    out
}

/// Addresses mentioned anywhere in the text, except the envelope sender of the original.
fn loose_addresses(text: &str, exclude: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let lower = text.to_ascii_lowercase();
    for (i, _) in text.match_indices('@') {
        let mut start = text[..i].rfind(|c: char| c.is_whitespace() || matches!(c, '<' | '(' | '"' | ':' | '[' | ',' | '\'')).map_or(0, |p| p + 1);
        // X.400 forms of an address: "c=US;...;dda:SMTP=a@example.com;", "/RFC-822=a(a)b/".
        let head = lower[start..i].rfind("smtp=").map(|p| p + 5).or_else(|| lower[start..i].rfind("rfc-822=").map(|p| p + 8));
        start += head.unwrap_or(0);
        let end = text[i..].find(|c: char| c.is_whitespace() || matches!(c, '>' | ')' | '"' | ',' | ']' | '\'' | ';')).map_or(text.len(), |p| i + p);
        let addr = clean_address(&text[start..end]);
        let context = lower.get(start.saturating_sub(12)..start).unwrap_or("");
        if !is_address(&addr) || context.contains("from:") || context.contains("from <") {
            continue;
        }
        if !out.iter().any(|o| o.eq_ignore_ascii_case(&addr)) {
            out.push(addr);
        }
        if out.len() >= 16 {
            break;
        }
    }
    // The sender's own address, as in `from_text`: dropped unless it is all there is.
    let kept: Vec<String> = out.iter().filter(|a| !exclude.iter().any(|e| e.eq_ignore_ascii_case(a))).cloned().collect();
    if kept.is_empty() { out } else { kept }
}

fn first_address(s: &str) -> Option<String> {
    let addr = clean_address(s.split_whitespace().next()?);
    is_address(&addr).then_some(addr)
}

pub fn is_address(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else { return false };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !s.contains(char::is_whitespace)
        && !s.contains(['<', '>', '(', ')', '[', ']', ';'])
        && s.len() < 256
}

/// Addresses found in a header value (`"Name" <a@b>, c@d`).
pub fn header_addresses(v: &str) -> Vec<String> {
    v.split(',')
        .map(clean_address)
        .filter(|a| is_address(a))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_reply_code() {
        assert_eq!(find_status("host [192.0.2.20]: 550 5.7.0 <a@b.c>").as_deref(), Some("5.7.0"));
        assert_eq!(find_status("5.7.509 Access denied").as_deref(), Some("5.7.509"));
        assert_eq!(find_status("from 192.0.2.112 v4.72"), None);
        assert_eq!(find_reply_code("host [192.0.2.20]: 550 5.7.0 x").as_deref(), Some("550"));
        assert_eq!(find_reply_code("SIZE=1543: Thu, 29 Apr 2010"), None);
    }

    #[test]
    fn sendmail_summary_lines() {
        let text = "While talking:\n>>> MAIL From:<s@x.jp>\n<<< 501 no access from mail server\n554 <k@example.org>... Remote protocol error\n";
        let f = from_text(text, &[]);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].address, "k@example.org");
        assert_eq!(f[0].reply_code.as_deref(), Some("554"));
        assert!(f[0].diagnostic.contains("no access"));
    }
}
