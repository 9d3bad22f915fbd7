//! The fault suite's short scenarios (`mailpipe_tests::chaos`): with each fault injected while a
//! sending node's traffic flows and then healed, every acknowledged event is stored exactly
//! once, and the edge acknowledges again within 5 s of the heal. The long outages (60 s, a
//! processor paused 10 minutes) are the `chaos` benchmark's (`--long`).

use mailpipe_tests::chaos::{run_for, Fault, Row};
use std::time::Duration;

async fn scenario(fault: Fault) -> Row {
    scenario_for(fault, fault.lasts(false)).await
}

async fn scenario_for(fault: Fault, lasts: Duration) -> Row {
    let row = run_for(fault, lasts, 2000, false).await;
    println!("{}\n{}", Row::HEADER, row.line());
    assert!(row.acknowledged >= 10_000, "too little was acknowledged to prove anything: {row:?}");
    assert_eq!((row.lost, row.duplicated, row.unexpected), (0, 0, 0), "lost, duplicated, never sent: {row:?}");
    assert!(row.acking_again < Duration::from_secs(5), "acknowledging again {:?} after the heal: {row:?}", row.acking_again);
    assert!(row.caught_up.is_some(), "the store never caught up: {row:?}");
    row
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_serve_mid_stream() {
    scenario(Fault::KillServe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_full_for_5_s_mid_stream() {
    let row = scenario(Fault::DiskFull).await;
    assert!(row.acking_again > Duration::ZERO, "the edge went on acknowledging on a full disk: {row:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clock_stepped_back_5_minutes_mid_stream() {
    let row = scenario(Fault::ClockBack).await;
    // The step took: the events sent after it are dated minutes before those sent first.
    assert!(row.span.is_some_and(|s| s > Duration::from_secs(240)), "{row:?}");
    // The events of the last 5 minutes, dated before those sent earlier, are in today's counts.
    assert_eq!(row.counted, Some(row.stored), "the overview's sends against the stored events: {row:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_ingest_mid_stream() {
    scenario(Fault::KillIngest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_process_mid_stream() {
    scenario(Fault::KillProcess).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_query_mid_stream() {
    scenario(Fault::KillQuery).await;
}

/// Long enough for the processor's group sessions to time out (6 s here) and for messages in
/// the producer to time out (30 s), after which tansu fences the idempotent producer and never
/// answers the members' joins: the edge replaces its producer, the members join again as new
/// ones (after 30 s without an assignment), and everything acknowledged is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_stalled_for_40_s_mid_stream() {
    scenario_for(Fault::BrokerStalled, Duration::from_secs(40)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_stopped_for_5_s_mid_stream() {
    scenario(Fault::ClickHouseDown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_processor_paused_for_20_s_mid_stream() {
    let row = scenario(Fault::ProcessorPaused).await;
    assert!(row.peak_lag >= 10_000, "a 20 s pause at 2,000 events/s leaves a backlog of about 40,000: {row:?}");
}
