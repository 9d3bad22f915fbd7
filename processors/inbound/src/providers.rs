// Wording and codes that mean one thing only at the provider that writes them: the same phrase
// from another server says something else (Outlook.com's "mailbox unavailable" is its answer for
// an address that does not exist; Mimecast's "security policies" rejection is its virus verdict).

use crate::reasons::{Evidence, Reason};

/// (host suffix of the reporting or the remote MTA, phrases, reason); phrases are lowercase,
/// `a*b` as in keywords.
static BY_HOST: &[(&str, &[&str], Reason)] = &[
    ("hotmail.com", &["requested action not taken: mailbox unavailable"], Reason::UserUnknown),
    ("outlook.com", &["requested action not taken: mailbox unavailable"], Reason::UserUnknown),
    // Symantec Email Security.cloud reports its own recipient validation.
    ("messagelabs.com", &["no such user", "542 * rejected"], Reason::UserUnknown),
    // Mimecast SMTP error codes (community.mimecast.com).
    ("mimecast.com", &["email rejected due to security policies"], Reason::VirusDetected),
    ("mimecast.com", &["host network not allowed", "anti-spoofing policy", "content examination policy"], Reason::PolicyViolation),
    ("mimecast.com", &["local ct ip reputation"], Reason::BadReputation),
    ("mimecast.com", &["administrative prohibition envelope blocked", "block policy for envelope from"], Reason::Rejected),
];

/// The reason a known provider's own wording names, given the hosts that wrote the report and
/// that answered the delivery attempt.
pub fn reason(ev: &Evidence<'_>) -> Option<Reason> {
    let text = ev.text;
    let hosts = [ev.reporter, ev.remote].map(|h| h.map(|h| h.trim().trim_end_matches('.')));
    let ours = |suffix: &str| hosts.iter().flatten().any(|h| host_is_within(h, suffix));
    // Yahoo's own MX hosts answer the same deferral to senders it refuses for other causes
    // (missing SPF, DKIM or DMARC) as to those with complaints: said by them, it is a refusal
    // of the sender; quoted by another system it keeps the meaning of its code.
    if ours("yahoodns.net") {
        if let Some(r) = YAHOO_MX.iter().find(|(p, _)| text.contains(p)).map(|(_, r)| *r) {
            return Some(r);
        }
    }
    if let Some(r) = orange_code(text).or_else(|| yahoo_code(text)) {
        return Some(r);
    }
    // A specific status code says more than these stage-bound verdicts; one with a zero subject
    // or detail (5.0.0, 5.7.0) is generic.
    let generic = ev.status.is_none_or(|s| s.split('.').skip(1).any(|n| n == "0"));
    if generic && ["gmail.com", "googlemail.com", "google.com"].iter().any(|d| ours(d)) {
        if let Some(r) = gmail_state(text) {
            return Some(r);
        }
    }
    // NTT docomo answers "550 Unknown user" after DATA when the recipient's reception settings
    // refuse the sender; a missing mailbox is refused at RCPT.
    if generic && ev.command == Some("DATA") && ours("docomo.ne.jp") && text.contains("unknown user") {
        return Some(Reason::Rejected);
    }
    BY_HOST.iter().find_map(|(suffix, phrases, reason)| {
        (ours(suffix) && phrases.iter().any(|p| crate::keywords::contains(text.as_bytes(), p))).then_some(*reason)
    })
}

/// Gmail ends the remote server's reply it quotes with `(state N)`, the SMTP stage that failed:
/// 6 MAIL, 8, 9 and 12 AUTH, 13 EHLO, 14 RCPT, 15, 17 and 18 DATA (after the recipients were
/// accepted, so a refusal there is the recipient system's filter).
fn gmail_state(text: &str) -> Option<Reason> {
    let at = text.rfind("(state ")?;
    let n = text[at + 7..].split(')').next()?;
    let r = match n {
        "6" | "8" | "9" => Reason::SystemError,
        "12" => Reason::NoRelaying,
        "13" => Reason::Blocked,
        "14" => Reason::UserUnknown,
        "15" | "17" | "18" => Reason::Filtered,
        _ => return None,
    };
    Some(r)
}

/// Wording of Yahoo's MX hosts (*.yahoodns.net) that means a refusal of the sender there
/// (senders.yahooinc.com/smtp-error-codes).
static YAHOO_MX: &[(&str, Reason)] = &[
    ("temporarily deferred due to unexpected volume or user complaints", Reason::Rejected),
    (" will be permanently deferred", Reason::Rejected),
];

/// Yahoo's bracketed error codes (senders.yahooinc.com/smtp-error-codes).
fn yahoo_code(text: &str) -> Option<Reason> {
    const CODES: &[(&[u8], Reason)] = &[
        // Deferred for the sending IP's complaint rate and volume: its reputation.
        (b"tss04]", Reason::BadReputation),
        // Refused because the sending IP is on a Spamhaus list.
        (b"bl21]", Reason::Blocked),
        (b"bl23]", Reason::Blocked),
        (b"ph01]", Reason::PolicyViolation),
    ];
    let b = text.as_bytes();
    memchr::memchr_iter(b'[', b).find_map(|at| CODES.iter().find(|(c, _)| b[at + 1..].starts_with(c)).map(|(_, r)| *r))
}

fn host_is_within(host: &str, domain: &str) -> bool {
    let (h, d) = (host.as_bytes(), domain.as_bytes());
    h.len() >= d.len()
        && h[h.len() - d.len()..].eq_ignore_ascii_case(d)
        && (h.len() == d.len() || h[h.len() - d.len() - 1] == b'.')
}

/// Orange and La Poste end their replies with a reference such as `OFR_506`, `LPN105_104` or
/// `OUK_513`; its last three digits name the cause (Orange postmaster error codes).
fn orange_code(text: &str) -> Option<Reason> {
    use Reason::*;
    // Searchers built once: this runs on every diagnostic.
    static FINDERS: std::sync::OnceLock<[memchr::memmem::Finder<'static>; 3]> = std::sync::OnceLock::new();
    let finders = FINDERS.get_or_init(|| [b"ofr", b"lpn", b"ouk"].map(|p| memchr::memmem::Finder::new(p)));
    let b = text.as_bytes();
    for finder in finders {
        for at in finder.find_iter(b) {
            if at > 0 && b[at - 1].is_ascii_alphanumeric() {
                continue;
            }
            let rest = &b[at + 3..];
            let digits = |s: &[u8]| s.len() >= 3 && s[..3].iter().all(u8::is_ascii_digit);
            let code = if rest.first() == Some(&b'_') && digits(&rest[1..]) {
                &rest[1..4]
            } else if digits(rest) && matches!(rest.get(3), Some(b'_' | b'-')) && digits(&rest[4..]) {
                &rest[4..7]
            } else {
                continue;
            };
            let r = match code {
                b"102" | b"103" | b"401" | b"510" | b"999" => Blocked,
                b"104" => TooManyConn,
                b"305" | b"402" => SecurityError,
                b"403" | b"405" | b"415" | b"421" => Rejected,
                b"416" | b"418" => UserUnknown,
                b"417" => MailboxFull,
                b"420" | b"426" => Suspend,
                b"505" => SystemError,
                b"506" => SpamDetected,
                b"514" => MesgTooBig,
                b"630" => PolicyViolation,
                _ => continue,
            };
            return Some(r);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(hosts: [Option<&str>; 2], text: &str) -> Option<Reason> {
        let ev = Evidence {
            text,
            status: None,
            reply_code: None,
            action: None,
            command: None,
            diagnostic_type: None,
            reporter: hosts[0],
            remote: hosts[1],
        };
        super::reason(&ev)
    }

    #[test]
    fn only_the_named_provider_is_trusted() {
        let t = "550 requested action not taken: mailbox unavailable";
        assert_eq!(reason([Some("BAY004-MC1.hotmail.com"), None], t), Some(Reason::UserUnknown));
        assert_eq!(reason([None, Some("mx.nothotmail.com")], t), None);
        assert_eq!(reason([None, None], t), None);
    }

    #[test]
    fn orange_references_name_the_cause() {
        assert_eq!(reason([None, None], "550 5.2.0 mail rejete. mail rejected. ofr_506 [506]"), Some(Reason::SpamDetected));
        assert_eq!(reason([None, None], "too many connections, slow down. lpn105_104"), Some(Reason::TooManyConn));
        assert_eq!(reason([None, None], "see gofr_506x"), None);
    }

    #[test]
    fn yahoo_codes_name_the_cause_wherever_they_are_quoted() {
        let t = "421 4.7.0 [tss04] messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints";
        assert_eq!(reason([None, None], t), Some(Reason::BadReputation));
        assert_eq!(reason([None, None], "553 5.7.1 [bl23] connections not accepted from ip addresses on spamhaus xbl"), Some(Reason::Blocked));
        assert_eq!(reason([None, None], "554 message not allowed - [ph01] email not accepted for policy reasons"), Some(Reason::PolicyViolation));
        assert_eq!(reason([None, None], "550 [tss041] unknown"), None);
    }

    #[test]
    fn gmail_states_name_the_stage() {
        let t = "the error that the other server returned was: 554 554 5.7.0 header error (state 18).";
        assert_eq!(reason([Some("googlemail.com"), None], t), Some(Reason::Filtered));
        assert_eq!(reason([Some("mx.example.net"), None], t), None);
        assert_eq!(reason([Some("googlemail.com"), None], "550 550 no such user (state 99)."), None);
    }
}
