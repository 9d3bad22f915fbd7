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
