// Hand-written messages for what the labelled corpus lacks: human replies, auto-replies in
// several languages, ARF variants and malformed input.

use mailpipe_inbound::{classify, inspect_json, Kind, Reason};
use std::path::PathBuf;

fn load(name: &str) -> Vec<u8> {
    let p = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("tests/fixtures").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn human_reply_threads_by_headers() {
    let c = classify(&load("reply-human.eml")).expect("classifies");
    assert_eq!(c.kind, Kind::Reply);
    assert!(c.recipients.is_empty());
    assert_eq!(c.thread.candidate_message_ids, vec!["abc123@sender.example", "first@sender.example"]);
    assert_eq!(c.thread.normalized_subject, "your offer");
}

#[test]
fn reply_without_headers_falls_back_to_sender_and_subject() {
    let c = classify(&load("reply-no-headers.eml")).expect("classifies");
    assert_eq!(c.kind, Kind::Reply);
    assert!(c.thread.candidate_message_ids.is_empty());
    assert_eq!(c.thread.from_address.as_deref(), Some("bob@example.org"));
    assert_eq!(c.thread.normalized_subject, "angebot");
}

#[test]
fn auto_replies_in_several_languages() {
    for name in ["auto-en.eml", "auto-de.eml", "auto-fr.eml", "auto-es.eml", "auto-nl.eml", "auto-ja.eml", "auto-vendor.eml"] {
        let c = classify(&load(name)).expect("classifies");
        assert_eq!(c.kind, Kind::AutoReply, "{name}");
        assert_eq!(c.recipients.first().map(|r| r.reason), Some(Reason::Vacation), "{name}");
        assert!(!c.recipients[0].hard_bounce);
    }
}

#[test]
fn arf_opt_out_with_crlf_and_headers_only_original() {
    let c = classify(&load("arf-optout.eml")).expect("classifies");
    assert_eq!(c.kind, Kind::Complaint);
    let fb = c.feedback.as_ref().expect("feedback");
    assert_eq!(fb.feedback_type, "opt-out");
    assert_eq!(fb.source_ip.as_deref(), Some("192.0.2.1"));
    assert_eq!(fb.reported_domain.as_deref(), Some("sender.example"));
    assert_eq!(c.original_message_id.as_deref(), Some("orig-42@sender.example"));
    assert_eq!(c.recipients[0].address, "victim@isp.example");
    assert_eq!(c.recipients[0].reason, Reason::Feedback);
    let v = inspect_json("arf-optout.eml", &load("arf-optout.eml"));
    assert_eq!(v["kind"], "complaint");
    assert_eq!(v["feedback_type"], "opt-out");
}

#[test]
fn truncated_dsn_still_yields_the_recipient() {
    let c = classify(&load("malformed-truncated.eml")).expect("classifies");
    assert_eq!(c.kind, Kind::Bounce);
    assert_eq!(c.recipients[0].address, "gone@example.net");
    assert_eq!(c.recipients[0].reason, Reason::UserUnknown);
    assert!(c.recipients[0].hard_bounce);
}

#[test]
fn garbage_is_unknown_not_a_panic() {
    let v = inspect_json("g.eml", &load("malformed-garbage.eml"));
    assert_eq!(v["kind"], "unknown");
    assert_eq!(v["recipients"].as_array().map(Vec::len), Some(0));
}
