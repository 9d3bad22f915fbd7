// The bounce reason taxonomy and how a reason is chosen from a status code, a reply code and the
// diagnostic wording (RFC 3463 codes first where they are specific, documented wording otherwise).

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    AuthFailure,
    BadReputation,
    Blocked,
    ContentError,
    Delivered,
    ExceedLimit,
    Expired,
    FailedStartTls,
    Feedback,
    Filtered,
    HasMoved,
    HostUnknown,
    MailboxFull,
    MailerError,
    MesgTooBig,
    NetworkError,
    NoRelaying,
    NotAccept,
    NotCompliantRfc,
    OnHold,
    PolicyViolation,
    Rejected,
    RequirePtr,
    SecurityError,
    SpamDetected,
    Speeding,
    Suspend,
    SyntaxError,
    SystemError,
    SystemFull,
    TooManyConn,
    Undefined,
    UserUnknown,
    Vacation,
    VirusDetected,
}

impl Reason {
    pub const ALL: [Reason; 35] = [
        Reason::AuthFailure,
        Reason::BadReputation,
        Reason::Blocked,
        Reason::ContentError,
        Reason::Delivered,
        Reason::ExceedLimit,
        Reason::Expired,
        Reason::FailedStartTls,
        Reason::Feedback,
        Reason::Filtered,
        Reason::HasMoved,
        Reason::HostUnknown,
        Reason::MailboxFull,
        Reason::MailerError,
        Reason::MesgTooBig,
        Reason::NetworkError,
        Reason::NoRelaying,
        Reason::NotAccept,
        Reason::NotCompliantRfc,
        Reason::OnHold,
        Reason::PolicyViolation,
        Reason::Rejected,
        Reason::RequirePtr,
        Reason::SecurityError,
        Reason::SpamDetected,
        Reason::Speeding,
        Reason::Suspend,
        Reason::SyntaxError,
        Reason::SystemError,
        Reason::SystemFull,
        Reason::TooManyConn,
        Reason::Undefined,
        Reason::UserUnknown,
        Reason::Vacation,
        Reason::VirusDetected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::AuthFailure => "authfailure",
            Reason::BadReputation => "badreputation",
            Reason::Blocked => "blocked",
            Reason::ContentError => "contenterror",
            Reason::Delivered => "delivered",
            Reason::ExceedLimit => "exceedlimit",
            Reason::Expired => "expired",
            Reason::FailedStartTls => "failedstarttls",
            Reason::Feedback => "feedback",
            Reason::Filtered => "filtered",
            Reason::HasMoved => "hasmoved",
            Reason::HostUnknown => "hostunknown",
            Reason::MailboxFull => "mailboxfull",
            Reason::MailerError => "mailererror",
            Reason::MesgTooBig => "mesgtoobig",
            Reason::NetworkError => "networkerror",
            Reason::NoRelaying => "norelaying",
            Reason::NotAccept => "notaccept",
            Reason::NotCompliantRfc => "notcompliantrfc",
            Reason::OnHold => "onhold",
            Reason::PolicyViolation => "policyviolation",
            Reason::Rejected => "rejected",
            Reason::RequirePtr => "requireptr",
            Reason::SecurityError => "securityerror",
            Reason::SpamDetected => "spamdetected",
            Reason::Speeding => "speeding",
            Reason::Suspend => "suspend",
            Reason::SyntaxError => "syntaxerror",
            Reason::SystemError => "systemerror",
            Reason::SystemFull => "systemfull",
            Reason::TooManyConn => "toomanyconn",
            Reason::Undefined => "undefined",
            Reason::UserUnknown => "userunknown",
            Reason::Vacation => "vacation",
            Reason::VirusDetected => "virusdetected",
        }
    }

    pub fn from_name(s: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == s)
    }

    /// Internal status codes (the x.0.9xx convention of Sisimai) used when the report itself
    /// carries no enhanced status code, so every recipient still gets a comparable code.
    fn pseudo_detail(self) -> &'static str {
        match self {
            Reason::AuthFailure => "926",
            Reason::BadReputation => "975",
            Reason::Blocked => "971",
            Reason::ContentError => "960",
            Reason::ExceedLimit => "923",
            Reason::Expired => "947",
            Reason::FailedStartTls => "976",
            Reason::Filtered => "910",
            Reason::HasMoved => "916",
            Reason::HostUnknown => "912",
            Reason::MailboxFull => "922",
            Reason::MailerError => "939",
            Reason::MesgTooBig => "934",
            Reason::NetworkError => "944",
            Reason::NoRelaying => "909",
            Reason::NotAccept => "932",
            Reason::NotCompliantRfc => "974",
            Reason::OnHold => "901",
            Reason::PolicyViolation => "972",
            Reason::Rejected => "918",
            Reason::RequirePtr => "973",
            Reason::SecurityError => "970",
            Reason::SpamDetected => "980",
            Reason::Speeding => "946",
            Reason::Suspend => "921",
            Reason::SyntaxError => "902",
            Reason::SystemError => "930",
            Reason::SystemFull => "931",
            Reason::TooManyConn => "945",
            Reason::UserUnknown => "911",
            Reason::VirusDetected => "981",
            Reason::Undefined | Reason::Delivered | Reason::Feedback | Reason::Vacation => "900",
        }
    }

    /// Whether the address itself is bad, so it should be suppressed for good.
    pub fn is_hard(self, status: &str) -> bool {
        match self {
            Reason::UserUnknown | Reason::HostUnknown | Reason::HasMoved => true,
            Reason::NotAccept => status.starts_with('5'),
            _ => false,
        }
    }
}

/// A code of the x.0.9xx family for reports that carry no enhanced status code.
pub fn pseudo_status(reason: Reason, temporary: bool) -> String {
    let class = match reason {
        Reason::Delivered => "2",
        Reason::UserUnknown | Reason::HostUnknown | Reason::HasMoved => "5",
        _ if temporary => "4",
        _ => "5",
    };
    if reason == Reason::Delivered {
        return "2.0.0".to_string();
    }
    format!("{class}.0.{}", reason.pseudo_detail())
}

/// Reason implied by an RFC 3463 enhanced status code alone (None when the code is generic).
pub fn from_status(status: &str) -> Option<Reason> {
    use Reason::*;
    if status.starts_with("2.") {
        return Some(Delivered);
    }
    let (class, rest) = status.split_once('.')?;
    let temporary = class == "4";
    let r = match rest {
        "1.0" if !temporary => UserUnknown,
        "1.1" | "1.3" if !temporary => UserUnknown,
        "1.2" if !temporary => HostUnknown,
        "1.4" if !temporary => Filtered,
        "1.6" => HasMoved,
        "1.7" | "1.8" => Rejected,
        "1.9" => SystemError,
        "1.10" => NotAccept,
        "2.0" if !temporary => Filtered,
        "2.1" if temporary => Blocked,
        "2.1" => Filtered,
        "2.2" => MailboxFull,
        "2.3" => ExceedLimit,
        "2.4" => Filtered,
        "3.0" if !temporary => SystemError,
        "3.1" => SystemFull,
        "3.2" => NotAccept,
        "3.3" | "3.5" => SystemError,
        "3.4" => MesgTooBig,
        "4.0" if !temporary => NetworkError,
        "4.1" | "4.7" => Expired,
        "4.4" if !temporary => HostUnknown,
        "4.2" | "4.4" | "4.6" | "4.8" => NetworkError,
        "4.3" => SystemError,
        "4.5" => SystemFull,
        "5.2" | "5.6" => SyntaxError,
        "5.3" => TooManyConn,
        "5.4" | "5.5" => SystemError,
        "6.0" | "6.1" | "6.2" | "6.3" | "6.5" | "6.6" | "6.7" | "6.8" | "6.9" => ContentError,
        "7.0" | "7.2" | "7.3" | "7.4" | "7.5" | "7.6" | "7.7" | "7.8" | "7.9" | "7.10"
        | "7.11" | "7.12" | "7.14" | "7.15" | "7.19" => SecurityError,
        "7.1" if temporary => Blocked,
        "7.1" => SecurityError,
        "7.13" => Suspend,
        "7.16" => MesgTooBig,
        "7.17" | "7.18" => HasMoved,
        "7.20" | "7.21" | "7.22" | "7.23" | "7.24" | "7.26" | "7.29" => AuthFailure,
        "7.25" => RequirePtr,
        "7.27" => NotAccept,
        "7.28" => SpamDetected,
        "7.30" => FailedStartTls,
        _ => return None,
    };
    Some(r)
}

/// Reason implied by an SMTP reply code alone (RFC 5321 4.2.2), for reports with no enhanced
/// code and no wording that names a cause. The generic codes (450, 451, 550, 554: "mailbox
/// unavailable", "transaction failed") name no cause, which servers answer for anything.
pub fn from_reply_code(code: &str) -> Option<Reason> {
    use Reason::*;
    Some(match code {
        "421" => SystemError,
        "452" => SystemFull,
        "551" => NoRelaying,
        "552" => MailboxFull,
        "553" => SyntaxError,
        _ => return None,
    })
}

/// A signal that bears on a verdict, independent of the others: how a verdict was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// A rule for one report format or provider (its own fields or wording).
    Format,
    /// The enhanced status code (RFC 3463 class and subject).
    Status,
    /// The SMTP reply code.
    ReplyCode,
    /// The diagnostic's generic wording.
    Wording,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Format => "format",
            Signal::Status => "status",
            Signal::ReplyCode => "reply_code",
            Signal::Wording => "wording",
        }
    }
}

/// The signals that agree with a verdict (hard or not), in the order format, status, reply
/// code, wording. `format_rule`: a format, agent or provider rule decided the reason (see
/// [`decide`]); the others count
/// when what they imply alone has the verdict's hardness (or, for a soft verdict, is temporary).
pub fn signals(ev: &Evidence<'_>, decision: &Decision, hard: bool, pseudo_status: bool) -> Vec<Signal> {
    let format_rule = decision.format_rule;
    let agrees = |r: Option<Reason>, status: &str| r.map(|r| r.is_hard(status) == hard);
    let status = ev.status.filter(|_| !pseudo_status);
    let mut out = Vec::new();
    if format_rule {
        out.push(Signal::Format);
    }
    if let Some(s) = status {
        if agrees(from_status(s), s).unwrap_or(!hard && s.starts_with('4')) {
            out.push(Signal::Status);
        }
    }
    let s = status.unwrap_or("5");
    if let Some(code) = ev.reply_code {
        // 550 and 553 name the mailbox ("unavailable", "name not allowed"): they bear out a
        // verdict that the address is bad, though alone they would not make it.
        if agrees(from_reply_code(code), s).unwrap_or(!hard && code.starts_with('4')) || (hard && matches!(code, "550" | "553")) {
            out.push(Signal::ReplyCode);
        }
    }
    let wording = decision.wording.unwrap_or_else(|| crate::keywords::match_text(ev.text, ev.command));
    if agrees(wording, s) == Some(true) {
        out.push(Signal::Wording);
    }
    out
}

/// Codes specific enough that the wording should not override them.
fn status_is_decisive(status: &str) -> bool {
    let rest = status.split_once('.').map_or("", |(_, r)| r);
    matches!(
        rest,
        "1.6" | "1.7" | "1.8" | "2.3" | "3.4" | "4.7" | "7.13" | "7.20" | "7.21" | "7.22" | "7.23" | "7.25"
            | "7.26" | "7.27" | "7.30"
    )
}

/// Whether the code itself says the mailbox address is bad (x.1.0, x.1.1, x.1.3, or
        // Microsoft's 5.1.10 RecipientNotFound).
fn status_names_user(status: Option<&str>) -> bool {
    status.and_then(|s| s.split_once('.')).is_some_and(|(_, rest)| matches!(rest, "1.0" | "1.1" | "1.3" | "1.10"))
}

/// What the report says about one recipient, as far as reason detection needs it.
pub struct Evidence<'a> {
    /// Lowercased diagnostic text (Diagnostic-Code or the free-text paragraph).
    pub text: &'a str,
    pub status: Option<&'a str>,
    pub reply_code: Option<&'a str>,
    /// DSN Action field, lowercased.
    pub action: Option<&'a str>,
    /// SMTP command after which the failure happened, uppercased (RCPT, MAIL, DATA, ...).
    pub command: Option<&'a str>,
    /// Diagnostic-Code type; `x-unix` means a local delivery program failed.
    pub diagnostic_type: Option<&'a str>,
    /// Host that wrote the report (Reporting-MTA, else the sender's domain).
    pub reporter: Option<&'a str>,
    /// Host that answered the delivery attempt (Remote-MTA).
    pub remote: Option<&'a str>,
}

/// How a reason was decided: by a rule for one format, agent or provider (`format_rule`), and
/// what the generic wording alone implies, where it was read (`wording`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub reason: Reason,
    pub format_rule: bool,
    pub wording: Option<Option<Reason>>,
}

pub fn decide(ev: &Evidence<'_>) -> Decision {
    match decide_first(ev) {
        Ok((reason, format_rule)) => Decision { reason, format_rule, wording: None },
        Err((reason, wording)) => Decision { reason: adjust(reason, ev), format_rule: false, wording },
    }
}

/// `Ok` when a rule before the generic ones decides; else `Err` with the generic verdict and
/// the wording's own reading, if it was taken.
fn decide_first(ev: &Evidence<'_>) -> Result<(Reason, bool), (Reason, Option<Option<Reason>>)> {
    if ev.action == Some("delivered") || ev.status.is_some_and(|s| s.starts_with("2.")) {
        return Ok((Reason::Delivered, false));
    }
    // A local delivery agent's own message (procmail, dovecot's deliver, mail.local...) names the
    // failure at the mailbox, after the SMTP dialogue: it decides before any status code.
    if ev.command.is_none_or(|c| c == "DATA") {
        if let Some(r) = crate::keywords::local_agent(ev.text) {
            return Ok((r, true));
        }
    }
    if ev.diagnostic_type.is_some_and(|t| t.starts_with("x-unix")) {
        // A local delivery program failed; only a full mailbox is worth telling apart.
        if crate::keywords::mentions(ev.text, Reason::MailboxFull) {
            return Ok((Reason::MailboxFull, true));
        }
        return Ok((Reason::MailerError, true));
    }
    // A provider's own wording is its verdict, whatever the dialogue stage.
    if let Some(r) = crate::providers::reason(ev) {
        return Ok((r, true));
    }
    Err(decide_raw(ev))
}

/// Corrections that follow from where in the SMTP dialogue the failure happened.
fn adjust(r: Reason, ev: &Evidence<'_>) -> Reason {
    let temporary = ev.status.is_some_and(|s| s.starts_with('4'));
    match (r, ev.command) {
        // Recipients are judged at RCPT: "unknown user" wording is taken at its word only when
        // the status code agrees (x.1.0, x.1.1, x.1.3, or
        // Microsoft's 5.1.10 RecipientNotFound) or the refusal answered RCPT TO. Said
        // anywhere else (after DATA, by a filter, with a mailbox-status code) it is a filter's
        // verdict on the message, not proof that the mailbox is gone.
        (Reason::UserUnknown, c)
            if c != Some("RCPT")
                && c != Some("MAIL")
                && !status_names_user(ev.status)
                && !crate::keywords::is_directory_verdict(ev.text) =>
        {
            Reason::Filtered
        }
        // A refusal at MAIL FROM is about the sender, not the recipient.
        (Reason::UserUnknown | Reason::HostUnknown | Reason::OnHold, Some("MAIL")) => Reason::Rejected,
        // Refused at the greeting: the connecting host is not welcome.
        (Reason::HostUnknown | Reason::UserUnknown | Reason::OnHold | Reason::SystemError, Some("HELO" | "EHLO")) => Reason::Blocked,
        // A temporary DNS failure says nothing final about the domain.
        (Reason::HostUnknown, _) if temporary => Reason::NetworkError,
        _ => r,
    }
}

fn decide_raw(ev: &Evidence<'_>) -> (Reason, Option<Option<Reason>>) {
    let by_status = ev.status.and_then(from_status);
    if let (Some(r), Some(s)) = (by_status, ev.status) {
        if status_is_decisive(s) {
            return (r, None);
        }
    }
    // Wording beats the remaining status codes: many servers send 5.x.x codes that are
    // wrong or generic (5.7.1 for everything), but their words name the failure.
    let wording = crate::keywords::match_text(ev.text, ev.command);
    (decide_rest(ev, by_status, wording), Some(wording))
}

fn decide_rest(ev: &Evidence<'_>, by_status: Option<Reason>, wording: Option<Reason>) -> Reason {
    if let Some(r) = wording {
        return r;
    }
    if ev.reply_code == Some("525") {
        return Reason::Suspend;
    }
    if let Some(r) = by_status {
        return r;
    }
    if let Some(s) = ev.status {
        let rest = s.split_once('.').map_or("", |(_, r)| r);
        if rest.starts_with("6.") {
            return Reason::ContentError;
        }
        if rest.starts_with("7.") {
            return Reason::SecurityError;
        }
    }
    if matches!(ev.action, Some("delayed") | Some("expired")) {
        return Reason::Expired;
    }
    if matches!(ev.command, Some("EHLO") | Some("HELO")) {
        return Reason::Blocked;
    }
    if let Some(r) = ev.reply_code.and_then(from_reply_code) {
        return r;
    }
    if ev.text.is_empty() {
        Reason::Undefined
    } else {
        Reason::OnHold
    }
}
