// Scores the classifier against a labelled corpus (labels.jsonl + messages/), shared by the
// corpus test and the `eval` example so both count agreement the same way.
//
// Agreement is counted per expected recipient entry, pairing the i-th expected entry with the
// i-th reported recipient. A missing recipient disagrees on every field; a reported recipient
// beyond the expected ones is counted as `extra` (and as a false positive for its reason).

use crate::{classify, Classification, Kind};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Expected {
    pub status: String,
    pub reply_code: String,
    pub reason: String,
    pub hard_bounce: bool,
}

#[derive(Debug, Clone)]
pub struct Labelled {
    pub id: String,
    pub kind: String,
    /// (line-ending variant, path)
    pub files: Vec<(String, PathBuf)>,
    pub expected: Vec<Expected>,
}

pub fn load_labels(corpus: &Path) -> Result<Vec<Labelled>, String> {
    let text = std::fs::read_to_string(corpus.join("labels.jsonl")).map_err(|e| format!("labels.jsonl: {e}"))?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("labels.jsonl: {e}"))?;
        let s = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
        let mut files = Vec::new();
        if let Some(obj) = v.get("files").and_then(|f| f.as_object()) {
            for variant in ["lf", "crlf", "cr"] {
                if let Some(p) = obj.get(variant).and_then(|p| p.as_str()) {
                    files.push((variant.to_string(), corpus.join(p)));
                }
            }
        }
        let expected = v
            .get("expected")
            .and_then(|e| e.as_array())
            .map(|a| {
                a.iter()
                    .map(|e| Expected {
                        status: s(e, "status"),
                        reply_code: s(e, "reply_code"),
                        reason: s(e, "reason"),
                        hard_bounce: e.get("hard_bounce").and_then(|b| b.as_bool()).unwrap_or(false),
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Labelled { id: s(&v, "id"), kind: s(&v, "kind"), files, expected });
    }
    Ok(out)
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
}

#[derive(Debug, Default)]
pub struct Report {
    pub messages: usize,
    pub entries: usize,
    pub reason_ok: usize,
    pub hard_ok: usize,
    pub status_ok: usize,
    pub reply_code_ok: usize,
    pub all_ok: usize,
    pub missing: usize,
    pub extra: usize,
    pub per_reason: BTreeMap<String, Counts>,
    /// Messages whose CRLF/CR copies classify differently from the LF copy.
    pub line_ending_mismatches: Vec<String>,
    /// `not-bounce` messages reported as bounces.
    pub false_bounces: Vec<String>,
    pub errors: Vec<String>,
    /// One line per disagreeing entry, for reading.
    pub misses: Vec<String>,
}

impl Report {
    pub fn pct(n: usize, d: usize) -> f64 {
        if d == 0 { 100.0 } else { 100.0 * n as f64 / d as f64 }
    }
}

pub fn evaluate(labels: &[Labelled]) -> Report {
    let mut r = Report::default();
    for l in labels {
        let Some((_, lf_path)) = l.files.first() else { continue };
        let Ok(raw) = std::fs::read(lf_path) else {
            r.errors.push(format!("{}: unreadable", l.id));
            continue;
        };
        r.messages += 1;
        let got = match classify(&raw) {
            Ok(c) => c,
            Err(e) => {
                r.errors.push(format!("{}: {e}", l.id));
                continue;
            }
        };
        for (variant, path) in l.files.iter().skip(1) {
            let same = std::fs::read(path).ok().and_then(|b| classify(&b).ok()).is_some_and(|c| c == got);
            if !same {
                r.line_ending_mismatches.push(format!("{} ({variant})", l.id));
            }
        }
        if l.kind == "not-bounce" && got.kind == Kind::Bounce {
            r.false_bounces.push(l.id.clone());
        }
        score(&mut r, l, &got);
    }
    r
}

fn score(r: &mut Report, l: &Labelled, got: &Classification) {
    for (i, e) in l.expected.iter().enumerate() {
        r.entries += 1;
        let Some(g) = got.recipients.get(i) else {
            r.missing += 1;
            r.per_reason.entry(e.reason.clone()).or_default().fn_ += 1;
            r.misses.push(format!("{} #{i}: expected {} {} {}, got nothing ({:?})", l.id, e.reason, e.status, e.reply_code, got.kind));
            continue;
        };
        let reason_ok = g.reason.as_str() == e.reason;
        let hard_ok = g.hard_bounce == e.hard_bounce;
        let status_ok = g.status == e.status;
        let code_ok = g.reply_code == e.reply_code;
        r.reason_ok += usize::from(reason_ok);
        r.hard_ok += usize::from(hard_ok);
        r.status_ok += usize::from(status_ok);
        r.reply_code_ok += usize::from(code_ok);
        r.all_ok += usize::from(reason_ok && hard_ok && status_ok);
        if reason_ok {
            r.per_reason.entry(e.reason.clone()).or_default().tp += 1;
        } else {
            r.per_reason.entry(e.reason.clone()).or_default().fn_ += 1;
            r.per_reason.entry(g.reason.as_str().to_string()).or_default().fp += 1;
        }
        if !(reason_ok && hard_ok && status_ok && code_ok) {
            r.misses.push(format!(
                "{} #{i}: expected {} {} {} {} | got {} {} {} {} | {}",
                l.id, e.reason, e.status, e.reply_code, e.hard_bounce,
                g.reason.as_str(), g.status, g.reply_code, g.hard_bounce,
                g.diagnostic.chars().take(160).collect::<String>()
            ));
        }
    }
    for g in got.recipients.iter().skip(l.expected.len()) {
        r.extra += 1;
        r.per_reason.entry(g.reason.as_str().to_string()).or_default().fp += 1;
        r.misses.push(format!("{}: extra recipient {} {}", l.id, g.address, g.reason.as_str()));
    }
}

/// Agreement per format family (the corpus' `kind`: `lhost-postfix`, `rhost-google`, `arf`, ...).
pub fn per_family(labels: &[Labelled]) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    for l in labels {
        let Some(got) = l.files.first().and_then(|(_, p)| std::fs::read(p).ok()).and_then(|b| classify(&b).ok()) else { continue };
        let f = out.entry(l.kind.clone()).or_default();
        f.messages += 1;
        for (i, e) in l.expected.iter().enumerate() {
            f.entries += 1;
            let g = got.recipients.get(i);
            f.reason_ok += usize::from(g.is_some_and(|g| g.reason.as_str() == e.reason));
            f.hard_ok += usize::from(g.is_some_and(|g| g.hard_bounce == e.hard_bounce));
        }
    }
    out
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Family {
    pub messages: usize,
    pub entries: usize,
    pub reason_ok: usize,
    pub hard_ok: usize,
}

/// One message of an extra corpus (`../shared/corpus/bounces-extra/*/labels.jsonl`): only what
/// its upstream tests assert, `None` where they say nothing.
#[derive(Debug, Clone)]
pub struct ExtraLabel {
    pub file: String,
    pub path: PathBuf,
    /// Addresses the upstream test expects (`Some(vec![])`: expects none).
    pub recipients: Option<Vec<String>>,
    /// A permanent failure (`true`) or a delay/warning (`false`).
    pub permanent: Option<bool>,
    /// `permanent` is a status class (5 or 4), as bounce_email's `type` labels are (its README:
    /// the type follows from the code's first digit), not whether delivery ended.
    pub permanent_is_class: bool,
    /// A bounce or delay notice at all (`false`: auto-replies, challenges, plain mail).
    pub bounce: Option<bool>,
    /// The address itself is bad (from BounceParser's `std_reason`: user_unknown and
    /// domain_error are; spam, over_quota and message_too_large are not).
    pub hard: Option<bool>,
    pub status: Option<String>,
    /// The format family where the corpus names one (mailman2's `detectors`).
    pub family: Option<String>,
}

/// Labels whose own corpus README says the assertion documents a library's behaviour, not the
/// message (bounceparser/README.md): plain spam asserted `is_bounce`, and a genuine Postfix DSN
/// the library chose not to count.
const LABEL_NOT_BOUNCE: &[&str] = &["spam-bogus-email-in-report.eml", "spam-lots-of-bogus-addresses.eml", "spam-with-image.eml", "misidentified-recipient.eml"];
const LABEL_IS_BOUNCE: &[&str] = &["whitelist.eml"];

pub fn load_extra(dir: &Path) -> Result<Vec<ExtraLabel>, String> {
    let text = std::fs::read_to_string(dir.join("labels.jsonl")).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("labels.jsonl: {e}"))?;
        let file = v.get("file").and_then(|f| f.as_str()).ok_or("labels.jsonl: a line without file")?.to_string();
        let flag = |k: &str| v.get(k).and_then(|b| b.as_bool());
        let recipients = v.get("recipients").and_then(|r| r.as_array()).map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect::<Vec<_>>());
        let mut bounce = flag("is_bounce").or(flag("bounced")).or(flag("permanent").map(|_| true)).or(recipients.as_ref().map(|r| !r.is_empty()));
        if LABEL_NOT_BOUNCE.contains(&file.as_str()) {
            bounce = Some(false);
        } else if LABEL_IS_BOUNCE.contains(&file.as_str()) {
            bounce = Some(true);
        }
        let hard = match v.get("std_reason").and_then(|r| r.as_str()) {
            Some("user_unknown" | "domain_error") => Some(true),
            Some("spam" | "over_quota" | "message_too_large") => Some(false),
            _ => None,
        };
        let status = v.get("status").and_then(|s| s.as_str()).filter(|s| s.len() >= 5 && s.as_bytes()[1] == b'.').map(str::to_string);
        let permanent_is_class = v.get("type").is_some();
        let family = v.get("detectors").and_then(|d| d.as_array()).and_then(|d| d.first()).and_then(|d| d.as_str()).map(str::to_string);
        out.push(ExtraLabel { path: dir.join(&file), file, recipients, permanent: flag("permanent"), permanent_is_class, bounce, hard, status, family });
    }
    Ok(out)
}

/// Agreement with an extra corpus; each figure counts only the messages labelled for it.
#[derive(Debug, Default)]
pub struct ExtraReport {
    pub messages: usize,
    /// Messages with expected addresses, and those whose answer holds every one of them.
    pub with_recipients: usize,
    pub recipients_ok: usize,
    pub with_permanent: usize,
    pub permanent_ok: usize,
    pub with_hard: usize,
    pub hard_ok: usize,
    pub with_status: usize,
    pub status_ok: usize,
    pub bounces: usize,
    pub bounces_found: usize,
    /// Labelled as no bounce (auto-replies, challenges, plain mail) but reported as one.
    pub false_bounces: Vec<String>,
    /// Labelled bounces that name a recipient, answered without any.
    pub no_recipient: Vec<String>,
    pub errors: Vec<String>,
    pub misses: Vec<String>,
    /// Per format family: (labelled checks, agreeing checks), over recipients and permanence.
    pub per_family: BTreeMap<String, (usize, usize)>,
}

pub fn evaluate_extra(labels: &[ExtraLabel]) -> ExtraReport {
    let mut r = ExtraReport::default();
    for l in labels {
        let got = match std::fs::read(&l.path).map_err(|e| e.to_string()).and_then(|b| classify(&b).map_err(|e| e.to_string())) {
            Ok(c) => c,
            Err(e) => {
                r.errors.push(format!("{}: {e}", l.file));
                continue;
            }
        };
        r.messages += 1;
        let before = (r.with_recipients + r.with_permanent, r.recipients_ok + r.permanent_ok);
        let family = l.family.clone();
        let mut miss = |what: String| r.misses.push(format!("{}: {what}", l.file));
        let is_bounce = got.kind == Kind::Bounce;
        // A recipient answered with the mailbox it was expanded to names both addresses.
        let found: Vec<String> = got.recipients.iter().flat_map(|g| std::iter::once(&g.address).chain(&g.expanded_to)).map(|a| a.to_ascii_lowercase()).collect();
        let summary = || {
            let rs: Vec<String> = got.recipients.iter().map(|g| format!("{} {} {}{}", g.address, g.reason.as_str(), g.status, if g.permanent { "" } else { " (delay)" })).collect();
            format!("{:?} [{}]", got.kind, rs.join(", "))
        };
        if let Some(want) = l.recipients.as_ref().filter(|w| !w.is_empty()) {
            r.with_recipients += 1;
            if want.iter().all(|w| found.contains(&w.to_ascii_lowercase())) {
                r.recipients_ok += 1;
            } else {
                miss(format!("recipients {want:?}, got {}", summary()));
            }
            if !is_bounce || got.recipients.iter().all(|g| g.address.is_empty()) {
                r.no_recipient.push(l.file.clone());
            }
        }
        if let Some(p) = l.permanent.filter(|_| l.permanent_is_class) {
            r.with_permanent += 1;
            let ok = is_bounce && got.recipients.iter().any(|g| g.status.starts_with(if p { '5' } else { '4' }));
            r.permanent_ok += usize::from(ok);
            if !ok {
                miss(format!("permanent (status class) {p}, got {}", summary()));
            }
        } else if let Some(p) = l.permanent {
            r.with_permanent += 1;
            // A delay notice may also be no bounce at all; a permanent failure must be one.
            let ok = if p {
                is_bounce && got.recipients.iter().any(|g| g.permanent)
            } else {
                !is_bounce || got.recipients.iter().all(|g| !g.permanent)
            };
            r.permanent_ok += usize::from(ok);
            if !ok {
                miss(format!("permanent {p}, got {}", summary()));
            }
        }
        if let Some(h) = l.hard {
            r.with_hard += 1;
            let ok = is_bounce && got.recipients.iter().any(|g| g.hard_bounce) == h;
            r.hard_ok += usize::from(ok);
            if !ok {
                miss(format!("hard {h}, got {}", summary()));
            }
        }
        if let Some(s) = &l.status {
            r.with_status += 1;
            let ok = got.recipients.iter().any(|g| &g.status == s);
            r.status_ok += usize::from(ok);
            if !ok {
                miss(format!("status {s}, got {}", summary()));
            }
        }
        if let Some(f) = family {
            let e = r.per_family.entry(f).or_default();
            e.0 += r.with_recipients + r.with_permanent - before.0;
            e.1 += r.recipients_ok + r.permanent_ok - before.1;
        }
        match l.bounce {
            Some(true) => {
                r.bounces += 1;
                r.bounces_found += usize::from(is_bounce);
                if !is_bounce {
                    miss(format!("a bounce, got {}", summary()));
                }
            }
            // A delay notice (a deferral, all recipients still being tried) is no bounce either.
            Some(false) if is_bounce && got.recipients.iter().any(|g| g.permanent) => {
                r.false_bounces.push(l.file.clone());
                miss(format!("no bounce, got {}", summary()));
            }
            _ => {}
        }
    }
    r
}
