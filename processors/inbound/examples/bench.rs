// Single-thread throughput of read+classify over every corpus file held in memory.
// Usage: cargo run --release --example bench -- [/path/to/corpus/messages] [passes]

use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let dir = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus/bounces/messages")
    });
    let passes: usize = std::env::args().nth(2).and_then(|p| p.parse().ok()).unwrap_or(20);
    let mut msgs: Vec<Vec<u8>> = Vec::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if let Ok(b) = std::fs::read(entry.path()) {
            msgs.push(b);
        }
    }
    let bytes: usize = msgs.iter().map(Vec::len).sum();
    println!("{} messages, {:.2} MB, {passes} passes, 1 thread", msgs.len(), bytes as f64 / 1e6);
    let mut sink = 0usize;
    for m in &msgs {
        sink += mailpipe_inbound::classify(m).map_or(0, |c| c.recipients.len());
    }
    let start = Instant::now();
    for _ in 0..passes {
        for m in &msgs {
            sink += mailpipe_inbound::classify(m).map_or(0, |c| c.recipients.len());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let n = (msgs.len() * passes) as f64;
    println!("{:.0} msgs/s per core, {:.1} MB/s, {:.1} us/msg (checksum {sink})", n / secs, (bytes * passes) as f64 / 1e6 / secs, secs * 1e6 / n);
}
