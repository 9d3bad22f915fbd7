// Reports of systems with a layout of their own that neither DSN fields nor the free-text reading
// find: Apache James's notices and the fml mailing list manager's refusals; and what qmail's own
// wording says in the reports of qmail and its clones.

use crate::dsn::{clean_address, collapse, is_address, Failure};
use crate::mime::Message;
use crate::reasons::Reason;

/// The failed recipients of a report in one of these layouts; None for any other message.
pub fn failures(msg: &Message) -> Option<Vec<Failure>> {
    apache_james(msg).or_else(|| fml(msg))
}

/// Apache James (AbstractNotify): the remote server's words under "Error message below:", then
/// "Message details:" with one indented `RCPT TO:` line per recipient. The details repeat the
/// envelope; they do not say at which SMTP stage the delivery failed.
fn apache_james(msg: &Message) -> Option<Vec<Failure>> {
    let h = &msg.headers;
    let james = h.get("subject").is_some_and(|s| s.trim() == "[BOUNCE]")
        || h.get("message-id").is_some_and(|id| id.contains(".JavaMail."))
        || h.get_all("received").any(|r| crate::keywords::contains(r.as_bytes(), "JAMES SMTP Server"));
    if !james {
        return None;
    }
    // An unsplittable multipart (its boundary parameter lost) is read as the text it is.
    let readable = |ct: &str| ct.starts_with("text/plain") || ct.starts_with("multipart/");
    let text = msg.parts.iter().filter(|p| readable(&p.content_type)).find_map(|p| {
        let (head, details) = p.text.split_once("\nMessage details:")?;
        head.lines().any(|l| l.trim_end() == "Error message below:").then_some((head, details))
    });
    let (head, details) = text?;
    let diagnostic = collapse(head);
    let out: Vec<Failure> = details
        .lines()
        .filter_map(|l| l.trim().strip_prefix("RCPT TO:"))
        .map(clean_address)
        .filter(|a| is_address(a))
        .map(|address| Failure { address, diagnostic: diagnostic.clone(), ..Failure::default() })
        .collect();
    (!out.is_empty()).then_some(out)
}

/// Refusals fml writes, lowercased, by reason (fml's own message texts).
const FML_NOTICES: &[(&str, Reason)] = &[
    ("not member article from", Reason::Rejected),
    ("not a member of this mailing list", Reason::Rejected),
    ("reject mail from", Reason::Rejected),
    ("spam mail from a spammer is rejected", Reason::Rejected),
    ("duplicated message-id", Reason::SystemError),
    ("has detected a loop condition", Reason::SystemError),
    ("loop back warning", Reason::SystemError),
    ("security alert", Reason::SecurityError),
];

/// fml's notices, sent from the list's `-admin` address with a Message-ID of its own
/// (`<...FML...@host>`): the address the refusal concerns closes a line as `<addr>.`.
fn fml(msg: &Message) -> Option<Vec<Failure>> {
    let h = &msg.headers;
    let ours = h.get("x-mlserver")?.trim_start().get(..3)?.eq_ignore_ascii_case("fml")
        && h.get("from").is_some_and(|f| f.to_ascii_lowercase().contains("-admin@"))
        && h.get("message-id").is_some_and(|id| id.contains(".FML"));
    if !ours {
        return None;
    }
    let body = msg.parts.iter().find(|p| p.content_type.starts_with("text/plain"))?;
    let text = body.text.split("\nOriginal mail as follows:").next().unwrap_or_default();
    let lower = format!("{} {}", text.to_lowercase(), h.get("subject").unwrap_or("").to_lowercase());
    let reason = FML_NOTICES.iter().find(|(p, _)| lower.contains(p)).map(|(_, r)| *r)?;
    let mut out: Vec<Failure> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.trim_end().strip_suffix(">.") else { continue };
        let Some(at) = rest.rfind('<') else { continue };
        let address = clean_address(&rest[at + 1..]);
        if is_address(&address) && !out.iter().any(|f| f.address.eq_ignore_ascii_case(&address)) {
            out.push(Failure { address, diagnostic: collapse(text), reason: Some(reason), ..Failure::default() });
        }
    }
    (!out.is_empty()).then_some(out)
}

/// qmail and the systems built on it (Yahoo's "Failure Notice"): qmail-send's subject, or the
/// Received line qmail writes for the bounce it sends.
pub fn is_qmail(msg: &Message) -> bool {
    let h = &msg.headers;
    h.get("subject").is_some_and(|s| matches!(s.trim(), "failure notice" | "Failure Notice"))
        || h.get_all("received").any(|r| r.trim_start().starts_with("(qmail "))
}

/// qmail reports a failure of its own system (a mailbox it cannot open or write, a delivery
/// program that cannot run) as "Unable to ..." in the words of qmail-local and qmail-send; it is
/// a system error unless the recipient's words name a cause of their own (a full mailbox, an
/// unknown user, a refused sender) or the failure came at MAIL FROM or at the greeting.
pub fn qmail_local_error(f: &Failure) -> Option<Reason> {
    const OWN: &[&str] = &["Unable to", "bad interpreter: No such file or directory"];
    if !OWN.iter().any(|p| f.diagnostic.contains(p)) || matches!(f.command, Some("MAIL" | "HELO" | "EHLO" | "CONN")) {
        return None;
    }
    use Reason::*;
    let named = crate::keywords::match_text(&f.diagnostic.to_lowercase(), f.command);
    let specific = named.is_some_and(|r| {
        matches!(
            r,
            MailboxFull | MesgTooBig | ExceedLimit | Suspend | HasMoved | NoRelaying | AuthFailure | UserUnknown
                | Filtered | RequirePtr | NotCompliantRfc | BadReputation | ContentError | Rejected | HostUnknown
                | SpamDetected | Speeding | TooManyConn | Blocked
        )
    });
    (!specific).then_some(SystemError)
}
