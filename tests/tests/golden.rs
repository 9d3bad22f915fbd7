//! Golden cases: for each dashboard, `query/cases/<dashboard>/<case>.query` (a tenant and a
//! URL query string) beside `<case>.result.json` (the answer). One loop runs every case
//! against the embedded store and a real ClickHouse; both must give the expected answer.
//! `MAILPIPE_BLESS=1` rewrites the answers from the embedded store (review the diff).
//! Then every measure alone, under every group-by, and every grain with all measures, through
//! the rollup, a DataFusion scan of raw rows and ClickHouse: all three must agree.

use chrono::NaiveDate;
use mailpipe_query::dashboards::dashboards;
use mailpipe_store::clickhouse::{ClickHouseEventStore, ClickHouseStoreConfig};
use mailpipe_store::datafusion::{DataFusionEventStore, DataFusionStoreConfig};
use mailpipe_store::{Aggregate, Dimension, EventStore, Filters, Frame, Grain, Measure};
use mailpipe_tests::fixtures;
use mailpipe_tests::servers::ClickHouse;
use std::path::PathBuf;

fn cases_dir() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../query/cases")
}

async fn stores(ch: &ClickHouse, dir: &std::path::Path) -> (DataFusionEventStore, ClickHouseEventStore) {
    let cfg = ClickHouseStoreConfig { url: ch.url(), database: "golden".into(), user: "default".into(), password: String::new() };
    ClickHouseEventStore::migrate(&cfg).await.unwrap();
    let clickhouse = ClickHouseEventStore::new(&cfg);
    let embedded = DataFusionEventStore::open(DataFusionStoreConfig::new(dir)).await.unwrap();
    let events = fixtures::events(3_000);
    for batch in events.chunks(1_000) {
        embedded.insert(batch).await.unwrap();
        clickhouse.insert(batch).await.unwrap();
    }
    // Half on disk, half in the tail: both are read.
    embedded.flush().await.unwrap();
    embedded.insert(&fixtures::events(1_500)[..]).await.unwrap();
    clickhouse.insert(&fixtures::events(1_500)[..]).await.unwrap();
    (embedded, clickhouse)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_cases_and_every_measure_agree_on_both_stores() {
    let ch = ClickHouse::start();
    let dir = tempfile::tempdir().unwrap();
    let (embedded, clickhouse) = stores(&ch, dir.path()).await;
    let bless = std::env::var("MAILPIPE_BLESS").is_ok_and(|v| v == "1");

    let mut ran = 0;
    for dashboard in dashboards() {
        let folder = cases_dir().join(dashboard.name);
        let mut cases: Vec<PathBuf> = std::fs::read_dir(&folder)
            .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "query"))
            .collect();
        cases.sort();
        assert!(!cases.is_empty(), "no cases in {}", folder.display());
        for case in cases {
            let text = std::fs::read_to_string(&case).unwrap();
            let (tenant, query) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
            let ours = (dashboard.answer)(&embedded, tenant, query).await.unwrap_or_else(|e| panic!("{}: {:?}", case.display(), e.errors));
            let theirs = (dashboard.answer)(&clickhouse, tenant, query).await.unwrap_or_else(|e| panic!("{}: {:?}", case.display(), e.errors));
            // As read back from text (serde_json's float parsing is not exact), like the file.
            let reread = |v: &serde_json::Value| serde_json::from_str::<serde_json::Value>(&v.to_string()).unwrap();
            let (ours, theirs) = (reread(&ours), reread(&theirs));
            let expected_file = case.with_extension("result.json");
            if bless {
                std::fs::write(&expected_file, serde_json::to_string_pretty(&ours).unwrap() + "\n").unwrap();
            }
            let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&expected_file).unwrap_or_else(|e| panic!("{}: {e}", expected_file.display()))).unwrap();
            assert_eq!(ours, expected, "embedded store, {}", case.display());
            assert_eq!(theirs, expected, "clickhouse, {}", case.display());
            ran += 1;
        }
    }
    assert!(ran >= 8, "{ran} golden cases");

    // Every measure alone under every group-by, and every grain with all measures.
    let d = |m, dd| NaiveDate::from_ymd_opt(2026, m, dd).unwrap();
    let mut questions = Vec::new();
    let groupings = [vec![], vec![Dimension::Campaign], vec![Dimension::Variant], vec![Dimension::Campaign, Dimension::Variant]];
    for group_by in &groupings {
        for m in Measure::all() {
            questions.push(Aggregate {
                frame: Some(Frame::new(d(3, 1), d(3, 31), chrono_tz::Europe::Paris, Grain::Day)),
                filters: Filters::default(),
                group_by: group_by.clone(),
                measures: vec![m],
            });
        }
    }
    for grain in [Grain::Total, Grain::Day, Grain::HourOfWeek] {
        for (tz, campaign) in [(chrono_tz::America::New_York, None), (chrono_tz::Asia::Kathmandu, Some("edge"))] {
            questions.push(Aggregate {
                frame: Some(Frame::new(d(1, 1), d(5, 31), tz, grain)),
                filters: Filters { campaign: campaign.map(String::from), variant: None },
                group_by: vec![Dimension::Variant],
                measures: Measure::all(),
            });
        }
    }
    questions.push(Aggregate { frame: None, filters: Filters { campaign: None, variant: Some("B".into()) }, group_by: vec![Dimension::Campaign], measures: Measure::all() });
    let mut nonempty = 0;
    for q in &questions {
        for tenant in ["acme", "globex", "nobody"] {
            let rolled = embedded.aggregate(tenant, q).await.unwrap();
            let scanned = embedded.scan(tenant, q).await.unwrap();
            let ch_answer = clickhouse.aggregate(tenant, q).await.unwrap();
            assert_eq!(rolled, scanned, "rollup vs DataFusion scan, {tenant}, {q:?}");
            assert_eq!(rolled, ch_answer, "embedded vs ClickHouse, {tenant}, {q:?}");
            nonempty += usize::from(!rolled.rows.is_empty());
        }
    }
    assert!(nonempty > questions.len(), "too few questions with data: {nonempty}");
}
