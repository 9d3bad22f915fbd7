//! The fault suite as a benchmark: `cargo run --release -p mailpipe-tests --bin chaos --
//! [--long] [--rate N] [FAULT...]` runs each scenario (all by default) and prints the table
//! of the README. `--long` makes the outages those of the reliability issue (60 s; the
//! processor paused 10 minutes); `--seconds N` makes every outage N seconds. The full-disk
//! scenario mounts a tmpfs: run it as root. `MAILPIPE_TEST_LOG=info` shows the roles' logs.

use mailpipe_tests::chaos::{run_for, Fault, Row};
use std::time::Duration;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut long = false;
    let mut rate = 2000;
    let mut seconds = None;
    let mut faults = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--long" => long = true,
            "--seconds" => seconds = Some(args.next().and_then(|n| n.parse().ok()).unwrap_or_else(|| usage("--seconds takes a number"))),
            "--rate" => rate = args.next().and_then(|n| n.parse().ok()).unwrap_or_else(|| usage("--rate takes events per second")),
            name => faults.push(Fault::parse(name).unwrap_or_else(|| usage(&format!("no fault {name:?}")))),
        }
    }
    if faults.is_empty() {
        faults = Fault::ALL.to_vec();
    }
    eprintln!("{} scenario(s) at {rate} events/s{}", faults.len(), if long { ", long outages" } else { "" });
    let mut lines = Vec::new();
    for f in faults {
        eprintln!("running {} ...", f.name());
        let lasts = seconds.map_or_else(|| f.lasts(long), Duration::from_secs);
        let row = run_for(f, lasts, rate, long).await;
        eprintln!("{}\n  {row:?}", row.line());
        lines.push(row.line());
    }
    println!("{}", Row::HEADER);
    for l in lines {
        println!("{l}");
    }
}

fn usage(why: &str) -> ! {
    let names: Vec<_> = Fault::ALL.iter().map(|f| f.name()).collect();
    eprintln!("{why}\nusage: chaos [--long] [--seconds N] [--rate N] [{}]...", names.join("|"));
    std::process::exit(2)
}
