// Replies: the ids to thread a reply onto the message it answers, the fallback keys (sender and
// normalized subject), and whether a person or a machine (RFC 3834 auto-reply) wrote it.

use crate::dsn::header_addresses;
use crate::mime::Message;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Thread {
    /// Message ids this mail may answer, most specific first (In-Reply-To, then References newest first).
    pub candidate_message_ids: Vec<String>,
    pub from_address: Option<String>,
    /// Subject without reply/forward prefixes and tags, lowercased, whitespace collapsed.
    pub normalized_subject: String,
}

pub fn thread(msg: &Message) -> Thread {
    let mut ids = Ids::default();
    for v in msg.headers.get_all("in-reply-to") {
        ids.push_all(v, false);
    }
    for v in msg.headers.get_all("references") {
        ids.push_all(v, true);
    }
    let ids = ids.list;
    Thread {
        candidate_message_ids: ids,
        from_address: msg.headers.get("from").and_then(|v| header_addresses(v).into_iter().next()),
        normalized_subject: normalize_subject(msg.headers.get("subject").unwrap_or("")),
    }
}

/// Most candidate ids kept: the In-Reply-To and the newest references are the ones a reply
/// answers; a header of 80,000 ids (seen in the wild) must not cost more than this.
pub const MAX_THREAD_IDS: usize = 64;

/// Candidate ids in order, each once (a set beside the list keeps it linear).
#[derive(Default)]
struct Ids {
    list: Vec<String>,
    seen: std::collections::HashSet<String>,
}

impl Ids {
    fn push_all(&mut self, v: &str, newest_first: bool) {
        let found = v.split('<').skip(1).filter_map(|s| s.split_once('>').map(|(id, _)| id.trim())).filter(|id| !id.is_empty() && id.len() < 512);
        let found: Vec<&str> = if newest_first { found.collect::<Vec<_>>().into_iter().rev().collect() } else { found.collect() };
        for id in found {
            if self.list.len() >= MAX_THREAD_IDS {
                return;
            }
            if self.seen.insert(id.to_string()) {
                self.list.push(id.to_string());
            }
        }
    }
}

/// Reply and forward prefixes in common languages, lowercased, without the colon.
const PREFIXES: &[&str] = &[
    "re", "fw", "fwd", "aw", "wg", "sv", "vs", "antw", "antwort", "réf", "ref", "tr", "rv", "r", "rif",
    "odp", "vá", "ynt", "回复", "答复", "转发", "回覆", "返信", "転送",
];

pub fn normalize_subject(subject: &str) -> String {
    let mut s = subject.trim();
    loop {
        let before = s;
        if let Some(rest) = s.strip_prefix('[').and_then(|r| r.split_once(']')).map(|(_, r)| r) {
            s = rest.trim_start();
        }
        if let Some(colon) = s.find([':', '：']) {
            let head = s[..colon].trim().to_lowercase();
            let head = head.trim_end_matches(|c: char| c.is_ascii_digit() || c == '[' || c == ']' || c == '(' || c == ')');
            if PREFIXES.contains(&head) {
                let skip = s[colon..].chars().next().map_or(1, char::len_utf8);
                s = s[colon + skip..].trim_start();
            }
        }
        if s == before {
            break;
        }
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// Out-of-office and auto-reply subject phrases in several languages, lowercased.
const AUTO_SUBJECTS: &[&str] = &[
    "out of office", "out of the office", "auto reply", "auto-reply", "autoreply", "automatic reply",
    "auto response", "autoresponse", "auto-response", "on vacation", "away from the office",
    "away from my desk", "i am away", "i'm away", "annual leave", "on leave", "vacation reply",
    "abwesenheitsnotiz", "abwesend", "automatische antwort", "nicht im büro", "außer haus", "ausser haus",
    "urlaub", "réponse automatique", "reponse automatique", "absence du bureau", "absent du bureau",
    "je suis absent", "message d'absence", "respuesta automática", "respuesta automatica",
    "fuera de la oficina", "fuera de oficina", "ausente", "automatisch antwoord", "afwezig",
    "niet aanwezig", "buiten kantoor", "afwezigheidsbericht", "risposta automatica", "fuori ufficio",
    "resposta automática", "fora do escritório", "automatisk svar", "frånvaro", "不在", "自動応答",
    "自動返信", "自动回复", "休暇",
];

/// Wording of challenge-response systems, which hold mail until its sender confirms.
const CHALLENGE_WORDS: &[&str] = &[
    "not pre-approved", "guest list", "prove you are human", "verify that you are a human", "challenge-response",
    "challenge/response", "confirm that you are a real person", "sender verification required",
];

/// Whether the message is a challenge-response system's request that the sender confirm.
pub fn challenge(msg: &Message) -> bool {
    let words = crate::phrases!(CHALLENGE_WORDS);
    msg.parts.iter().filter(|p| p.content_type == "message/delivery-status").any(|p| words.any_in(&p.text)) || words.any_in(&crate::dsn::notification_text(msg))
}

/// Why a message is judged automatic, if it is: the header or wording that says so.
pub fn auto_reply_signal(msg: &Message) -> Option<String> {
    let h = &msg.headers;
    if let Some(v) = h.get("auto-submitted") {
        let v = v.trim().to_ascii_lowercase();
        if v.starts_with("auto-replied") || (v.starts_with("auto-") && !v.starts_with("auto-generated")) {
            return Some(format!("auto-submitted: {v}"));
        }
    }
    for name in ["x-autoreply", "x-autorespond", "x-autoresponder", "x-autoreply-from", "x-mail-autoreply", "x-autogenerated"] {
        if let Some(v) = h.get(name) {
            let v = v.trim().to_ascii_lowercase();
            if v != "no" && v != "false" {
                return Some(format!("{name}: {v}"));
            }
        }
    }
    if h.get("x-ms-exchange-inbox-rules-loop").is_some() && h.get("x-auto-response-suppress").is_some() {
        return Some("exchange auto-response".to_string());
    }
    let precedence = h.get("precedence").unwrap_or("").trim().to_ascii_lowercase();
    if precedence == "auto_reply" {
        return Some("precedence: auto_reply".to_string());
    }
    if h.get("x-post-messageclass").is_some_and(|v| v.to_ascii_lowercase().contains("autoreply")) {
        return Some("x-post-messageclass".to_string());
    }
    let subject = h.get("subject").unwrap_or("").to_lowercase();
    if let Some(p) = AUTO_SUBJECTS.iter().find(|p| subject.contains(*p)) {
        return Some(format!("subject: {p}"));
    }
    // "Auto-Submitted: auto-generated" or bulk precedence alone also mark vacation programs.
    let generated = h.get("auto-submitted").is_some_and(|v| v.to_ascii_lowercase().contains("auto-generated"));
    if generated || matches!(precedence.as_str(), "bulk" | "junk") {
        let body = first_text(msg).to_lowercase();
        if AUTO_SUBJECTS.iter().any(|p| body.contains(p)) || body.contains("i will be back") || body.contains("limited access to email") {
            return Some("auto-generated body".to_string());
        }
    }
    None
}

fn first_text(msg: &Message) -> &str {
    msg.parts
        .iter()
        .find(|p| p.content_type.starts_with("text/"))
        .map_or("", |p| &p.text[..floor_char_boundary(&p.text, 4096)])
}

pub fn floor_char_boundary(s: &str, max: usize) -> usize {
    let mut i = max.min(s.len());
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Whether the message presents itself as a reply at all.
pub fn is_reply(msg: &Message, t: &Thread) -> bool {
    if !t.candidate_message_ids.is_empty() {
        return true;
    }
    let subject = msg.headers.get("subject").unwrap_or("").trim();
    normalize_subject(subject) != subject.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_normalize() {
        assert_eq!(normalize_subject("Re: AW: [list] Fwd:  Hello   World"), "hello world");
        assert_eq!(normalize_subject("RE[2]: Offer"), "offer");
        assert_eq!(normalize_subject("回复：报价"), "报价");
        assert_eq!(normalize_subject("Meeting: tomorrow"), "meeting: tomorrow");
    }

    #[test]
    fn thread_ids_come_once_newest_first_and_at_most_max() {
        let refs: Vec<String> = (0..80_000).map(|i| format!("<{}@x>", i % 50_000)).collect();
        let raw = format!("From: a@b.example\r\nIn-Reply-To: <7@x>\r\nReferences: {}\r\nSubject: Re: hi\r\n\r\nthanks\r\n", refs.join(" "));
        let ids = thread(&crate::mime::parse(raw.as_bytes())).candidate_message_ids;
        assert_eq!(ids.len(), MAX_THREAD_IDS);
        assert_eq!(&ids[..3], ["7@x", "29999@x", "29998@x"], "In-Reply-To, then the newest references");
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }
}
