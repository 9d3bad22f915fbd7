// Wording tables per bounce reason: phrases MTAs and mailbox providers document or commonly emit,
// matched against lowercased diagnostic text. `a*b` means `a` followed later by `b`.

use crate::reasons::Reason;

/// Checked in this order: the first reason with a matching phrase wins, so narrower reasons
/// (a full mailbox, a moved mailbox) come before broad ones (rejected, blocked).
static TABLE: &[(Reason, &[&str])] = &[
    (Reason::MailboxFull, &[
        "mailbox full", "mailbox is full", "mailbox was full", "mailbox has exceeded", "full mailbox",
        "mailbox size limit", "mailbox would exceed", "mailbox exceeds", "mailfolder is full",
        "over quota", "overquota", "quota exceeded", "exceeded storage", "exceeds quota",
        "quota violation", "disk quota", "insufficient disk space", "no space left on device",
        "not enough space", "not enough storage", "user has exceeded quota", "account is over",
        "too many messages on the server", "space has been used up", "too much mail data",
        "boite du destinataire pleine", "mailbox quota", "mailbox *full", "maildir *quota",
        "quota *exceeded", "out of storage space", "recipient's mailbox is full",
    ]),
    (Reason::MesgTooBig, &[
        "message too big", "message is too big", "message too large", "message is too large",
        "message size exceeds", "message exceeds the maximum size", "size limit", "exceeds size limit",
        "message length exceeds", "mail size limit", "message file too big", "message size too large",
        "message larger than", "size of message exceeds", "is larger than the maximum",
        "maximum message size", "exceeds the maximum message size", "email is too large", "line limit exceeded",
    ]),
    (Reason::ExceedLimit, &[
        "message length exceeds administrative limit", "exceeds the recipient's limit",
        "too many recipients for this message",
    ]),
    (Reason::Suspend, &[
        "is currently suspended", "has been suspended", "account has been suspended", "mailbox disabled",
        "mailbox is disabled", "this mailbox is disabled", "account disabled", "account is disabled",
        "account has been disabled", "inactive account", "account is inactive", "user suspended",
        "is a deactivated mailbox", "deactivated mailbox", "mailbox is frozen", "user is terminated",
        "temporarily inactive", "email account that you tried to reach is disabled",
        "email account that you tried to reach is inactive", "account has been disabled or discontinued",
        "archived recipient", "boite du destinataire archivee", "mailbox currently suspended",
        "user or domain is disabled", "account is locked", "invalid/inactive user",
        "recipient suspend the service", "temporary locked", "mailbox unavailable or access denied",
    ]),
    (Reason::HasMoved, &["has been replaced by", "address has moved", "mailbox has moved", "no longer at this address"]),
    (Reason::NoRelaying, &[
        "relay access denied", "relaying denied", "relay denied", "relaying not permitted",
        "relay not permitted", "unable to relay", "we do not relay", "not permitted to relay",
        "relaying mail to", "is not permitted to relay", "not allowed to relay", "relay prohibited",
        "relaying prohibited", "no relaying", "relay not allowed", "that domain isn't in my list of allowed rcpthosts",
        "domain isn't in my list of allowed rcpthosts", "not in my list of allowed rcpthosts",
        "relay not authorized", "mail relay denied",
    ]),
    (Reason::AuthFailure, &[
        "spf check: fail", "spf fail", "spf validation failed", "sender policy framework",
        "dmarc policy", "dmarc validation", "failed dmarc", "dmarc fail", "dkim signature fail",
        "dkim validation failed", "doesn't meet the required authentication level",
        "authentication requirements defined for the sender", "inspect your spf settings",
        "bad spf records", "//spf.pobox.com", "is not allowed to send from <*per it's spf record",
        "unauthenticated email from", "not pass authentication checks", "did not pass dmarc",
        "spf) domain authentication fail", "5.7.26 ", "5.7.509", "spf record",
    ]),
    (Reason::RequirePtr, &[
        "ptr record", "reverse dns", "reverse lookup", "rdns", "cannot find your hostname",
        "cannot resolve your address", "ip name lookup failed", "no ptr", "unresolvable relay host name",
        "generic dns ptr", "dynamic ip or generic", "does not have a ptr", "forward dns entry does not point",
        "reverse dns failed", "client host rejected: cannot find your", "mismatches client ip",
        "unverifyable sending ips", "dns lookup failure: *try again later",
    ]),
    (Reason::NotCompliantRfc, &[
        "not rfc 5322 compliant", "rfc 5322", "rfc5322", "rfc 2822", "rfc2822", "rfc 822", "duplicate header",
        "multiple from", "multiple addresses in from", "this message is not rfc", "not compliant with rfc",
        "non-compliant with rfc", "headers are not rfc", "message is not compliant",
        "contains invalid characters in headers", "bare lf", "bare <lf>",
    ]),
    (Reason::BadReputation, &[
        "sender reputation", "poor reputation", "low reputation", "bad reputation", "ip reputation",
        "reputation of the sending", "has a poor reputation", "temporarily rate limited due to ip reputation",
        "sending ip has been blocked due to reputation", "domain reputation",
    ]),
    (Reason::VirusDetected, &[
        "virus", "malware", "infected", "malicious content", "message contains a threat",
    ]),
    (Reason::SpamDetected, &[
        "spam", "unsolicited", "bulk email", "bulk mail", "content filter rejection", "mail content denied",
        "message content rejected", "rejected as junk", "junk mail", "classified as bulk",
        "unacceptable content", "recurrent pattern detection", "message refused by mailmarshal",
        "uribl", "surbl", "blacklisted url", "mail score (*over ", "antispam checks",
        "our system has detected that this message is", "identified as a bulk", "considered unsolicited",
        "spam-like", "rejecting banned content", "rejecting mail content",
    ]),
    (Reason::PolicyViolation, &[
        // A bare "policy violation" names no policy: the status code says more (5.7.0 is a
        // security verdict); the local site's own policy is one.
        "local policy violation", "denied by policy", "rejected for policy reasons", "not accepted for policy reasons",
        "message rejected due to local policy", "organization policy", "organizational settings",
        "email rejected due to security policies", "an illegal attachment", "attachments not allowed",
        "prohibited attachment", "header error", "header are not accepted", "closed mailing list",
        "members-only list", "messages with multiple addresses", "mass mailer", "protocol violation",
        "message given low priority", "not accepting mail with attachments", "you are not allowed to post",
    ]),
    (Reason::FailedStartTls, &[
        "starttls is required", "must issue a starttls", "requires tls", "tls required",
        "encryption required", "starttls failed", "tls negotiation failed", "requiretls",
        "must use tls", "tls is required",
    ]),
    (Reason::Speeding, &[
        "rate limit", "ratelimit", "sending too fast", "too many messages from", "exceeded the rate",
        "receiving mail at a rate", "sending rate", "too many emails", "throttled", "throttling",
        "temporarily deferred due to unexpected volume", "mail volume", "too many mails",
    ]),
    (Reason::TooManyConn, &[
        "too many connections", "too many simultaneous connections", "too many concurrent",
        "too many sessions", "connection limit", "concurrent connections", "connections from your host",
        "too many smtp sessions", "too many recipients", "exceed the maximum number of recipients",
        "too many hosts", "frequency limited", "service temporarily unavailable because of too many",
        "sorry, too many clients", "connection rate limit", "you have exceeded the maximum",
    ]),
    (Reason::HostUnknown, &[
        "host unknown", "unknown host", "host or domain name not found", "domain does not exist",
        "domain not found", "no such domain", "illegal host", "domain must exist", "recipient domain must exist",
        "unknown domain", "unrouteable address", "unroutable address", "domain is not reachable",
        "name or service not known", "mail domain mentioned in email address is unknown",
        "host not found", "the account or domain may not exist", "domain name not found",
        "553 *does not exist", "nxdomain", "domain name does not exist", "invalid domain",
        "dns records for the destination computer could not be found", "domain is not valid",
        "lookup failure: host *not found",
    ]),
    (Reason::UserUnknown, &[
        "user unknown", "unknown user", "no such user", "no such mailbox", "no such recipient",
        "no such person", "no such address", "user not found", "user not known", "user doesn't exist",
        "user does not exist", "user not exist", "user not active", "unknown recipient",
        "recipient unknown", "recipient not found", "recipient does not exist", "recipient not exist",
        "invalid recipient", "not a valid recipient", "recipient address rejected: user unknown",
        "recipient address rejected: unknown user", "recipient address rejected: invalid user",
        "recipient address rejected: access denied", "address unknown", "address does not exist",
        "address not present in directory", "email address does not exist", "email address could not be found",
        "mailbox does not exist", "mailbox not found", "mailbox not present", "mailbox is inactive",
        "mailbox invalid", "invalid mailbox", "mailbox unavailable", "mailbox is unavailable", "unknown mailbox",
        "no mailbox", "is not a known user", "is not a valid mailbox", "not a valid user",
        "no account by that name", "not a local address", "not listed in domino directory",
        "not listed in public name & address book", "is not an active address", "does not exist here",
        "the email account that you tried to reach does not exist", "there is no one at this address",
        "this address no longer accepts mail", "no longer valid", "badrcptto", "validrcptto",
        "user missing home directory", "invalid address", "address invalid", "5.1.0 address rejected",
        "account does not exist", "account *does not exist", "user *does not exist", "user *was not found",
        "recipient *was not found", "mailbox *does not exist", "rcpt <*does not exist", "unknown e*mail address",
        "unknown local*part", "address not found", "address couldn't be found", "non*existent user", "nonexistent", "this user doesn't have a *account",
        "recipient is not local", "recipient rejected", "recipient not accepted", "recipient is not accepted",
        "recipient refuses to accept", "sorry, no mailbox here", "vdeliver: invalid or unknown virtual user",
        "does not have an account here", "not our customer", "utilisateur inconnu", "destinataire inconnu",
        "unbekannter empfänger", "benutzer unbekannt", "existiert nicht", "no existe", "unknown or illegal alias",
        "addressee unknown", "resolver.adr.recipnotfound", "resolver.adr.recipientnotfound",
        "recipient address rejected.", "the recipient name is not recognized", "bad destination mailbox",
        "doesn't have a", "no valid recipients for this", "isn't in my list of allowed rcpthosts",
    ]),
    (Reason::Filtered, &[
        "message filtered", "user reject", "user refuses to receive", "refused due to recipient preferences",
        "is not accepting any mail", "account is protected by", "message rejected due to user rules",
        "only accepting mail from specific email addresses", "you have been blocked by the recipient",
        "recipient id refuse to receive mail", "has restricted sms e-mail", "bounced address",
        "not found recipient account", "blocked by the recipient", "recipient has blocked",
    ]),
    (Reason::Rejected, &[
        "sender rejected", "sender address rejected", "sender verify failed", "invalid sender",
        "sender is in my black list", "sender not pre-approved", "sender was rejected",
        "sender email address rejected", "sender address has been blacklisted", "sender is spammer",
        "domain of sender address", "bogus mail from", "null sender is not allowed",
        "empty envelope senders not allowed", "mail from not owned by user", "unroutable sender address",
        "returned mail not accepted here", "administrative prohibition", "access denied (sender",
        "this server does not accept mail from", "emetteur invalide", "batv", "not a registered gateway user",
        "fully qualified email address required", "your email address has been blacklisted",
        "sending to/from an address that has been blacklisted", "sender domain is empty",
        "email address is not verified", "can't determine purported responsible address",
        "sender address is not", "rejected by the recipient's mail server", "not on the recipient's list of senders",
        "not authorized to send", "not allowed to send email to", "you do not have permission to post",
        "permission to post", "group may not exist", "you're not authorized", "the group you tried to contact",
        "invalid from address", "from address is not", "sender domain does not exist", "sender address domain",
    ]),
    (Reason::Blocked, &[
        "blocked using", "blocked by", "was blocked", "is blocked", "blacklisted", "blocklist", "block list",
        "black list", "denylist", "dnsbl", " rbl", "spamhaus", "spamcop", "barracudacentral",
        "client host rejected", "sender ip address rejected", "bad sender ip", "banned sending ip",
        "ip address is listed", "not currently accepting mail from your ip", "please use the smtp server of your isp",
        "no access from mail server", "helo command rejected", "hosts with dynamic ip", "dynamic ip",
        "go away", "you are not allowed to connect", "connection refused by", "refused to talk to me",
        "confirm this mail server", "your server requires confirmation", "access from ip address",
        "is not allowed to send mail from", "invalid ip for sending", "rejecting open proxy",
        "host network not allowed", "service not available, closing transmission channel",
        "smtp error from remote mail server after initial connection", "refused - see http",
        "temporarily deferred due to user complaints", "your network is temporary", "listed as abusive",
        "abus detecte", "mail server at *is blocked", "your access ip", "server access forbidden",
        "esmtp not accepting connections", "was not authenticated", "no valid recipients from",
        "poor reputation", "your ip", "not allowed to send mail", "connection dropped",
    ]),
    (Reason::ContentError, &[
        "content error", "improper use of 8-bit data", "8-bit data in message header", "message header size",
        "illegal character", "invalid message content", "message contains invalid", "mime type not allowed",
        "conversion required", "line too long", "malformed mime",
    ]),
    (Reason::SystemFull, &["mail system full", "system is full", "insufficient system storage", "out of disk space", "disk full", "no space on the mail server"]),
    (Reason::NotAccept, &[
        "does not accept mail", "does not accept any mail", "not accepting mail", "null mx", "no mx",
        "accepts no mail", "mail is not accepted", "not accepting network messages", "domain does not receive mail",
        "host does not accept mail",
    ]),
    (Reason::Expired, &[
        "delivery time expired", "not delivered within", "delivery expired", "message expired", "message timed out",
        "queue too long", "in the queue too long", "giving up on", "retry timeout exceeded",
        "retry time not reached", "could not be delivered for", "delivery attempts will continue",
        "has been delayed", "have been failing for a long time", "not been collected after",
        "was not reachable within the allowed queue period", "unable to deliver message after multiple retries",
        "maximum time", "connection timed out", "timed out", "server did not respond", "expired",
        "could not find a gateway for", "failed to deliver to domain", "retry period", "delivery failed *attempts",
    ]),
    (Reason::NetworkError, &[
        "no route to host", "host is unreachable", "network is unreachable", "host name lookup failure",
        "malformed name server reply", "name server reply", "routing loop", "mail forwarding loop",
        "too many hops", "hop count exceeded", "message looping", "unable to resolve route",
        "unrouteable mail domain", "could not connect and send", "dns lookup failure", "dns error",
        "temporary lookup failure", "lost connection", "connection reset", "connection closed",
        "could not connect", "unable to connect", "connect to *failed",
    ]),
    (Reason::SyntaxError, &[
        "syntax error", "command unrecognized", "command not recognized", "bad sequence of commands",
        "unrecognized command", "line too long for", "invalid command",
    ]),
    (Reason::SystemError, &[
        "system error", "server error", "local error in processing", "local configuration error",
        "mail system configuration error", "server configuration error", "system config error",
        "temporary local problem", "queue file write error", "loops back to myself", "mail loop",
        "forwarding loop broken", "interrupted system call", "timeout waiting for input",
        "service currently unavailable", "it encountered an error while being processed",
        "internal error", "remote server is misconfigured", "could not load drd", "transaction failed",
        "unable to connect *daemon", "temporarily unavailable",
    ]),
    (Reason::MailerError, &[
        "x-unix", "command died with status", "command output:", "procmail", "mailer error",
        "pipe to |", "exit status", "unknown mailer error", "permission denied",
    ]),
    (Reason::SecurityError, &[
        "authentication required", "authentication failed", "authentication credentials invalid",
        "mechanism is too weak", "security policy", "encryption needed", "not authorized", "unauthorized",
        "sender is not allowed", "must be authenticated", "authentication is required",
        "user not authenticated", "please authenticate",
    ]),
];

/// Narrow phrases that would otherwise be caught by a broader phrase of another reason.
static FIRST: &[(&str, Reason)] = &[
    ("addresses rejected : access denied", Reason::Rejected),
    ("sender address rejected", Reason::Rejected),
    ("domain of sender address", Reason::Rejected),
    ("content presents a potential", Reason::PolicyViolation),
    ("multiple *addresses in from", Reason::NotCompliantRfc),
    ("connection rate limit", Reason::TooManyConn),
    ("did not accept our requests to connect", Reason::Expired),
    ("recipient account is blocked", Reason::Suspend),
    ("compte du destinataire est bloque", Reason::Suspend),
    ("groups.google.com", Reason::Rejected),
    ("'send mail as'", Reason::Rejected),
    ("email address is not verified", Reason::NoRelaying),
    ("not configured to relay", Reason::NoRelaying),
    ("spam classification", Reason::SpamDetected),
    ("my name was rejected", Reason::Blocked),
    ("spamhaus.org", Reason::Blocked),
    ("spamcop.net", Reason::Blocked),
    ("couldn't find a mail exchanger", Reason::NotAccept),
    ("could not find a mail exchanger", Reason::NotAccept),
    ("no mx record", Reason::NotAccept),
    ("improper sequence of commands", Reason::SyntaxError),
    ("does not have authentication information", Reason::AuthFailure),
    ("fails to pass authentication", Reason::AuthFailure),
    ("could not deliver for the last", Reason::Expired),
    ("sent to too many recipients", Reason::Speeding),
    // Cox's documented AUP codes (cox.com email error codes): blocklists and account holds.
    ("aup#cxbl", Reason::Blocked),
    ("aup#cdrbl", Reason::Blocked),
    ("aup#ipbl", Reason::Blocked),
    ("aup#rbl", Reason::Blocked),
    ("aup#dnsbl", Reason::Blocked),
    ("aup#cxthrt", Reason::SecurityError),
    ("aup#cxmj", Reason::SecurityError),
];

/// Verdicts of a directory lookup by the reporting system itself: the recipient does not exist,
/// whatever SMTP stage the report was written at.
static DIRECTORY_VERDICTS: &[&str] = &[
    "not listed in domino directory", "not listed in public name & address book",
    "recipient name is not recognized", "address couldn't be found", "resolver.adr.recipnotfound",
    "resolver.adr.recipientnotfound", "mail.local: unknown user", "no valid recipients for this", "the email account that you tried to reach does not exist",
    // The address itself named before the verdict ("<a@b>: User unknown"), unlike the bare
    // "550 : User unknown" some carriers (KDDI au) answer when the recipient's filter refused.
    ">: user unknown",
    // IMail and similar systems reporting their own directory lookup.
    "unknown user: ",
    // Yahoo's documented answer for an address it has no account for.
    "this user doesn't have a yahoo.com account", "this user doesn't have a ymail.com account",
    "this user doesn't have a rocketmail.com account",
];

/// Local delivery agents, known by how they sign their messages, and the failures they name
/// (their own message texts: dovecot deliver, mail.local, procmail, maildrop, vpopmail, vmailmgr).
/// A message of one of them is a local delivery failure: its words decide, whatever the status
/// code the MTA wrapped it in; any other message of it is the mailer's error.
static LOCAL_AGENTS: &[(&[&str], &[(&str, Reason)])] = &[
    (&["your message to <*> was automatically rejected:"], &[
        ("not enough disk space", Reason::MailboxFull),
        ("quota exceeded", Reason::MailboxFull),
        ("mailbox doesn't exist: ", Reason::UserUnknown),
    ]),
    (&["mail.local: "], &[
        ("disc quota exceeded", Reason::MailboxFull),
        ("mailbox full or quota exceeded", Reason::MailboxFull),
        ("temporary file write error", Reason::SystemError),
        (": invalid mailbox path", Reason::UserUnknown),
        (": unknown user:", Reason::UserUnknown),
        (": user missing home directory", Reason::UserUnknown),
        (": user unknown", Reason::UserUnknown),
    ]),
    (&["procmail: ", "/procmail "], &[
        ("quota exceeded while writing", Reason::MailboxFull),
        ("user over quota", Reason::MailboxFull),
        ("service unavailable", Reason::SystemError),
        ("no space left to finish writing", Reason::SystemFull),
    ]),
    (&["maildrop: "], &[
        ("cannot find system user", Reason::UserUnknown),
        ("invalid user specified.", Reason::UserUnknown),
        ("maildir over quota.", Reason::MailboxFull),
    ]),
    (&["vdelivermail: "], &[
        ("user does not exist, but will deliver to ", Reason::Filtered),
        ("domain is over quota", Reason::MailboxFull),
        ("user is over quota", Reason::MailboxFull),
        ("account is locked email bounced", Reason::Suspend),
        ("sorry, no mailbox here by that name.", Reason::UserUnknown),
    ]),
    (&["vdeliver: "], &[
        ("delivery failed due to system quota violation", Reason::MailboxFull),
        ("invalid or unknown base user or domain", Reason::UserUnknown),
        ("invalid or unknown virtual user", Reason::UserUnknown),
        ("user name does not refer to a virtual user", Reason::UserUnknown),
    ]),
];

/// The reason a local delivery agent's message in `text` (lowercased) names; None when no agent
/// signs it.
pub fn local_agent(text: &str) -> Option<Reason> {
    let hay = text.as_bytes();
    let (_, messages) = LOCAL_AGENTS.iter().find(|(marks, _)| marks.iter().any(|m| contains(hay, m)))?;
    Some(messages.iter().find(|(p, _)| contains(hay, p)).map_or(Reason::MailerError, |(_, r)| *r))
}

pub fn is_directory_verdict(text: &str) -> bool {
    DIRECTORY_VERDICTS.iter().any(|p| contains(text.as_bytes(), p))
}

/// Returns the first reason (in table order) whose wording occurs in `text`.
pub fn match_text(text: &str, _command: Option<&str>) -> Option<Reason> {
    let hay = text.as_bytes();
    if hay.len() < 2 {
        return None;
    }
    let m = matcher();
    let mut best = usize::MAX;
    // Phrases with gaps are searched in the whole text once, not at every place they could start.
    let mut gapped: Vec<Option<bool>> = Vec::new();
    for i in 0..hay.len() - 1 {
        let key = usize::from(hay[i]) << 8 | usize::from(hay[i + 1]);
        let (lo, hi) = (m.starts[key] as usize, m.starts[key + 1] as usize);
        for (n, &(rank, pat, head)) in m.entries[lo..hi].iter().enumerate() {
            if rank >= best || !hay[i..].starts_with(&pat.as_bytes()[..head]) {
                continue;
            }
            let hit = if head == pat.len() {
                true
            } else {
                if gapped.is_empty() {
                    gapped.resize(m.entries.len(), None);
                }
                *gapped[lo + n].get_or_insert_with(|| contains(&hay[i..], pat))
            };
            if hit {
                best = rank;
            }
        }
        if best == 0 {
            break;
        }
    }
    (best != usize::MAX).then(|| m.reasons[best])
}

/// Every phrase of FIRST and TABLE indexed by its first two bytes, so one pass over the text
/// finds all of them; `rank` orders the hits as the tables do (FIRST entries, then TABLE rows).
struct Matcher {
    starts: Vec<u32>,
    /// (rank, phrase, length of the phrase's literal start before any `*`)
    entries: Vec<(usize, &'static str, usize)>,
    reasons: Vec<Reason>,
}

fn matcher() -> &'static Matcher {
    static M: std::sync::OnceLock<Matcher> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let mut phrases: Vec<(usize, &'static str)> = Vec::new();
        let mut reasons = Vec::new();
        for (p, r) in FIRST {
            phrases.push((reasons.len(), *p));
            reasons.push(*r);
        }
        for (r, list) in TABLE {
            phrases.extend(list.iter().map(|p| (reasons.len(), *p)));
            reasons.push(*r);
        }
        let key = |p: &str| {
            let b = p.as_bytes();
            usize::from(b[0]) << 8 | usize::from(b[1])
        };
        // Every phrase starts with at least two literal bytes (checked by a unit test).
        phrases.retain(|(_, p)| p.len() >= 2 && !p.as_bytes()[..2].contains(&b'*'));
        phrases.sort_by_key(|(_, p)| key(p));
        let mut starts = vec![0u32; 65537];
        for (_, p) in &phrases {
            starts[key(p) + 1] += 1;
        }
        for k in 0..65536 {
            starts[k + 1] += starts[k];
        }
        let entries = phrases.into_iter().map(|(r, p)| (r, p, p.find('*').unwrap_or(p.len()))).collect();
        Matcher { starts, entries, reasons }
    })
}

/// A fixed list of literal phrases found in one pass over a text, ASCII case ignored: the
/// phrases are indexed by their first two bytes (a bitmap of 8 KiB says which pairs start one).
pub struct Phrases {
    pairs: Vec<u64>,
    /// Per first byte, the range of `entries` whose phrases start with it.
    first: Vec<(u16, u16)>,
    /// (second byte, phrase), sorted by the phrase's first two bytes.
    entries: Vec<(u8, &'static [u8])>,
}

impl Phrases {
    /// `list`: lowercase phrases of at least two bytes.
    pub fn new(list: &[&'static str]) -> Phrases {
        let mut sorted: Vec<&'static [u8]> = list.iter().map(|p| p.as_bytes()).filter(|p| p.len() >= 2).collect();
        sorted.sort_unstable();
        let mut pairs = vec![0u64; 1024];
        let mut first = vec![(0u16, 0u16); 256];
        for (i, p) in sorted.iter().enumerate() {
            let k = usize::from(p[0]) << 8 | usize::from(p[1]);
            pairs[k >> 6] |= 1 << (k & 63);
            let f = &mut first[usize::from(p[0])];
            if f.0 == f.1 {
                *f = (i as u16, i as u16);
            }
            f.1 = i as u16 + 1;
        }
        Phrases { pairs, first, entries: sorted.into_iter().map(|p| (p[1], p)).collect() }
    }

    /// Whether any of the phrases occurs in `hay`.
    pub fn any_in(&self, hay: &str) -> bool {
        let hay = hay.as_bytes();
        let mut prev = match hay.first() {
            Some(b) => b.to_ascii_lowercase(),
            None => return false,
        };
        for i in 1..hay.len() {
            let b = hay[i].to_ascii_lowercase();
            let k = usize::from(prev) << 8 | usize::from(b);
            let (a, c) = (prev, b);
            prev = b;
            if self.pairs[k >> 6] >> (k & 63) & 1 == 0 {
                continue;
            }
            let (lo, hi) = self.first[usize::from(a)];
            let start = i - 1;
            let hit = self.entries[usize::from(lo)..usize::from(hi)]
                .iter()
                .any(|&(second, p)| second == c && hay[start..].get(..p.len()).is_some_and(|w| w.eq_ignore_ascii_case(p)));
            if hit {
                return true;
            }
        }
        false
    }
}

/// A [`Phrases`] built once, on first use, from a constant list.
#[macro_export]
#[doc(hidden)]
macro_rules! phrases {
    ($list:expr) => {{
        static SET: std::sync::OnceLock<$crate::keywords::Phrases> = std::sync::OnceLock::new();
        SET.get_or_init(|| $crate::keywords::Phrases::new($list))
    }};
}

/// Whether `hay` contains `pat`, where `*` in `pat` allows any text in between.
pub fn contains(hay: &[u8], pat: &str) -> bool {
    let mut from = 0;
    for piece in pat.split('*') {
        let Some(i) = find(&hay[from..], piece.as_bytes()) else { return false };
        from += i + piece.len();
    }
    true
}

/// Whether any phrase listed for `reason` occurs in `text`.
pub fn mentions(text: &str, reason: Reason) -> bool {
    TABLE
        .iter()
        .filter(|(r, _)| *r == reason)
        .any(|(_, phrases)| phrases.iter().any(|p| contains(text.as_bytes(), p)))
}

/// Substring search for short phrases in short texts: building a two-way searcher per call
/// (as `memmem::find` does) costs more than this first-byte scan.
fn find(hay: &[u8], pat: &[u8]) -> Option<usize> {
    let (&first, rest) = pat.split_first()?;
    let last_start = hay.len().checked_sub(pat.len())?;
    memchr::memchr_iter(first, &hay[..=last_start]).find(|&i| &hay[i + 1..i + pat.len()] == rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phrase_is_indexed() {
        let all = FIRST.iter().map(|(p, _)| *p).chain(TABLE.iter().flat_map(|(_, l)| l.iter().copied()));
        for p in all {
            assert!(p.len() >= 2 && !p.as_bytes()[..2].contains(&b'*'), "phrase {p:?} cannot be indexed");
            assert_eq!(p, p.to_lowercase(), "phrase {p:?} must be lowercase");
        }
    }

    #[test]
    fn phrases_are_found_anywhere_in_any_case() {
        let set = Phrases::new(&["not yet been delivered", "giving up", "ab"]);
        assert!(set.any_in("The message has NOT YET been delivered."));
        assert!(set.any_in("giving up"));
        assert!(set.any_in("xxab"));
        assert!(!set.any_in("giving u"));
        assert!(!set.any_in(""));
        assert!(!set.any_in("a"));
    }

    #[test]
    fn order_of_tables_decides() {
        assert_eq!(match_text("550 mailbox full, user unknown", None), Some(Reason::MailboxFull));
        assert_eq!(match_text("sender address rejected: user unknown", None), Some(Reason::Rejected));
        assert_eq!(match_text("messages with multiple 550 5.7.1 addresses in from: header", None), Some(Reason::NotCompliantRfc));
        assert_eq!(match_text("x", None), None);
    }
}
