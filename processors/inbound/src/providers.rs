// Wording and codes that mean one thing only at the provider that writes them: the same phrase
// from another server says something else (Outlook.com's "mailbox unavailable" is its answer for
// an address that does not exist; Mimecast's "security policies" rejection is its virus verdict).

use crate::reasons::Reason;

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
pub fn reason(hosts: [Option<&str>; 2], text: &str) -> Option<Reason> {
    if let Some(r) = orange_code(text) {
        return Some(r);
    }
    let hosts = hosts.map(|h| h.map(|h| h.trim().trim_end_matches('.')));
    BY_HOST.iter().find_map(|(suffix, phrases, reason)| {
        let ours = hosts.iter().flatten().any(|h| host_is_within(h, suffix));
        (ours && phrases.iter().any(|p| crate::keywords::contains(text.as_bytes(), p))).then_some(*reason)
    })
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
    let b = text.as_bytes();
    for prefix in ["ofr", "lpn", "ouk"] {
        for (at, _) in text.match_indices(prefix) {
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
}
