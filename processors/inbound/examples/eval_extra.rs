// Agreement with the extra labelled corpora (other projects' test messages), which the
// classifier was never tuned on, and per format family of the main corpus.
// Usage: cargo run --release --example eval_extra -- [../shared/corpus] [--misses]

use mailpipe_inbound::eval::{evaluate_extra, load_extra, load_labels, per_family, Report};
use std::path::PathBuf;

fn main() {
    let root = std::env::args().nth(1).filter(|a| !a.starts_with("--")).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus")
    });
    let show_misses = std::env::args().any(|a| a == "--misses");
    let fail = |e: String| -> ! {
        eprintln!("eval_extra: {e}");
        std::process::exit(2)
    };
    let labels = load_labels(&root.join("bounces")).unwrap_or_else(|e| fail(e));
    println!("{:<24} {:>5} {:>8} {:>8}", "family", "rcpts", "reason", "hard");
    for (family, f) in per_family(&labels) {
        let (reason, hard) = (Report::pct(f.reason_ok, f.entries), Report::pct(f.hard_ok, f.entries));
        let flag = if reason < 100.0 || hard < 100.0 { "  <" } else { "" };
        println!("{family:<24} {:>5} {reason:>7.1}% {hard:>7.1}%{flag}", f.entries);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("bounces-extra")).unwrap_or_else(|e| fail(e.to_string())).flatten().map(|e| e.path()).filter(|p| p.join("labels.jsonl").exists()).collect();
    dirs.sort();
    println!();
    println!("{:<14} {:>5} {:>16} {:>16} {:>14} {:>14} {:>14} {:>6} {:>7}", "corpus", "msgs", "recipients", "permanent", "hard", "status", "bounce found", "false", "no rcpt");
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let r = evaluate_extra(&load_extra(&dir).unwrap_or_else(|e| fail(e)));
        let cell = |ok: usize, n: usize| format!("{ok}/{n} {:.1}%", Report::pct(ok, n));
        println!(
            "{name:<14} {:>5} {:>16} {:>16} {:>14} {:>14} {:>14} {:>6} {:>7}",
            r.messages, cell(r.recipients_ok, r.with_recipients), cell(r.permanent_ok, r.with_permanent), cell(r.hard_ok, r.with_hard),
            cell(r.status_ok, r.with_status), cell(r.bounces_found, r.bounces), r.false_bounces.len(), r.no_recipient.len()
        );
        for (family, (n, ok)) in &r.per_family {
            println!("  {family:<16} {ok}/{n} checks (recipients, permanent) {:.1}%", Report::pct(*ok, *n));
        }
        if !r.errors.is_empty() {
            println!("  errors {:?}", r.errors);
        }
        if show_misses {
            for m in &r.misses {
                println!("  MISS {name}/{m}");
            }
        }
    }
}
