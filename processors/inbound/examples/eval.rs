// Prints per-reason precision/recall and overall agreement of the classifier on a labelled corpus.
// Usage: cargo run --release --example eval -- /path/to/corpus [--misses]

use mailpipe_inbound::eval::{evaluate, load_labels, Report};
use std::path::PathBuf;

fn main() {
    let mut args = std::env::args().skip(1);
    let corpus = args.next().map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus/bounces")
    });
    let show_misses = std::env::args().any(|a| a == "--misses");
    let labels = match load_labels(&corpus) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("eval: {e}");
            std::process::exit(2);
        }
    };
    let r = evaluate(&labels);
    println!("{:<16} {:>9} {:>7} {:>5} {:>4} {:>4}", "reason", "precision", "recall", "tp", "fp", "fn");
    for (reason, c) in &r.per_reason {
        let p = Report::pct(c.tp, c.tp + c.fp);
        let rc = Report::pct(c.tp, c.tp + c.fn_);
        println!("{reason:<16} {p:>8.1}% {rc:>6.1}% {:>5} {:>4} {:>4}", c.tp, c.fp, c.fn_);
    }
    let n = r.entries;
    println!("messages {}  expected entries {n}  missing {}  extra {}", r.messages, r.missing, r.extra);
    println!("agreement: reason {:.2}%  hard_bounce {:.2}%  status {:.2}%  reply_code {:.2}%  reason+hard+status {:.2}%",
        Report::pct(r.reason_ok, n), Report::pct(r.hard_ok, n), Report::pct(r.status_ok, n),
        Report::pct(r.reply_code_ok, n), Report::pct(r.all_ok, n));
    println!("line-ending mismatches {:?}", r.line_ending_mismatches);
    println!("not-bounce reported as bounce {:?}", r.false_bounces);
    println!("errors {:?}", r.errors);
    if show_misses {
        for m in &r.misses {
            println!("MISS {m}");
        }
    }
}
