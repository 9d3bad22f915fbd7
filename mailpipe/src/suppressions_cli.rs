//! `mailpipe suppressions import | export`: the suppression list in and out as CSV, through a
//! running server's API (`--url`, default `http.public_url`). Without `--key`, a key of the
//! tenant is made for this one run in the local registry and revoked when it ends.
//!
//! Import reads the CSV files other platforms export (header names are matched loosely):
//! - Amazon SES: `EmailAddress,Reason,LastUpdateTime` (Reason BOUNCE or COMPLAINT);
//! - Postmark: `EmailAddress,SuppressionReason,Origin,CreatedAt` (HardBounce, SpamComplaint,
//!   ManualSuppression);
//! - SendGrid: `email,created,...` (bounces also `status,reason`: the reason text becomes the note);
//! - Mailgun: `address,code,error,created_at` (bounces), `address,tags,created_at`;
//! - mailpipe's own export, or no header at all: `address[,reason[,stream[,note]]]`.
//!
//! A reason column's value is mapped when it names one (bounce, hard_bounce, complaint, spam,
//! unsubscribe, manual, ...); otherwise it is kept as the note and the line gets `--reason`.

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use mailpipe_config::Config;
use mailpipe_suppression::Reason;
use mailpipe_tenants::{NewKey, Registry, Scope, Tier};
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Import a CSV file of suppressed addresses (SES, Postmark, SendGrid, Mailgun exports, or
    /// `address[,reason[,stream[,note]]]`), with a progress bar and a report of refused lines.
    Import {
        #[arg(long)]
        tenant: String,
        file: PathBuf,
        /// Reason of lines that name none (hard_bounce, complaint, unsubscribe,
        /// soft_bounce_limit, manual).
        #[arg(long, default_value = "manual")]
        reason: String,
        #[command(flatten)]
        server: Server,
    },
    /// Write the tenant's suppressions in force as CSV (address,reason,stream,since,expires_at,
    /// source,campaign,status,diagnostic,note), to standard output or `--output`.
    Export {
        #[arg(long)]
        tenant: String,
        /// Only this reason.
        #[arg(long)]
        reason: Option<String>,
        /// Only suppressions that apply to this stream.
        #[arg(long)]
        stream: Option<String>,
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[command(flatten)]
        server: Server,
    },
}

#[derive(clap::Args)]
pub struct Server {
    /// Base URL of a running mailpipe (default: http.public_url).
    #[arg(long)]
    url: Option<String>,
    /// An API key of the tenant (suppressions:write to import, suppressions:read to export);
    /// default: a key made for this run in the local registry, revoked afterwards.
    #[arg(long, env = "MAILPIPE_API_KEY", hide_env_values = true)]
    key: Option<String>,
}

/// A key for one run: revoked when dropped, if this run made it.
struct RunKey {
    secret: String,
    made: Option<(Registry, String)>,
}

impl Drop for RunKey {
    fn drop(&mut self) {
        if let Some((registry, id)) = &self.made {
            if let Err(e) = registry.revoke_api_key(id) {
                eprintln!("warning: could not revoke the key made for this run ({id}): {e}");
            }
        }
    }
}

fn run_key(config: &Config, server: &Server, tenant: &str, scope: Scope) -> anyhow::Result<RunKey> {
    if let Some(k) = &server.key {
        return Ok(RunKey { secret: k.clone(), made: None });
    }
    let registry = Registry::open(config.registry_path()).with_context(|| format!("opening the registry {} (or pass --key)", config.registry_path().display()))?;
    if !registry.tenants().iter().any(|t| t == tenant) {
        bail!("no tenant {tenant:?} in {}", config.registry_path().display());
    }
    let mut new = NewKey::new(tenant, &[scope]);
    new.name = "mailpipe suppressions (one run)".into();
    new.tier = Tier::Enterprise;
    new.expires_at = Some(chrono::Utc::now() + chrono::Duration::hours(6));
    let secret = registry.create_api_key(new)?;
    let id = registry.list_api_keys(Some(tenant)).into_iter().filter(|k| secret.contains(&k.id)).map(|k| k.id).next().context("the key just made is not listed")?;
    Ok(RunKey { secret, made: Some((registry, id)) })
}

fn base(config: &Config, server: &Server) -> String {
    server.url.clone().unwrap_or_else(|| config.http.public_url.clone()).trim_end_matches('/').to_string()
}

/// The reason a CSV value names, if it names one.
pub fn reason_of(value: &str) -> Option<Reason> {
    let v: String = value.trim().to_ascii_lowercase().chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    Some(match v.as_str() {
        "bounce" | "bounced" | "hardbounce" | "hard" | "permanent" | "badaddress" => Reason::HardBounce,
        "complaint" | "spamcomplaint" | "spam" | "spamreport" | "abuse" | "complained" => Reason::Complaint,
        "unsubscribe" | "unsubscribed" | "optout" | "listunsubscribe" => Reason::Unsubscribe,
        "softbouncelimit" | "softbounce" => Reason::SoftBounceLimit,
        "manual" | "manualsuppression" | "manuallyadded" | "blocked" => Reason::Manual,
        _ => return None,
    })
}

/// Where the columns are: address, reason, stream, note.
#[derive(Debug, PartialEq)]
struct Columns {
    address: usize,
    reason: Option<usize>,
    stream: Option<usize>,
    note: Option<usize>,
}

fn header(row: &csv::StringRecord) -> Option<Columns> {
    let names: Vec<String> = row.iter().map(|h| h.trim().to_ascii_lowercase().replace([' ', '_', '-'], "")).collect();
    let find = |wanted: &[&str]| names.iter().position(|n| wanted.contains(&n.as_str()));
    let address = find(&["emailaddress", "email", "address", "recipient", "emailaddr"])?;
    Some(Columns {
        address,
        reason: find(&["suppressionreason", "reason", "type"]),
        stream: find(&["stream", "messagestream"]),
        note: find(&["note", "error", "diagnostic", "description"]),
    })
}

pub fn run(config: &Config, command: Command) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Runtime::new()?;
    match command {
        Command::Import { tenant, file, reason, server } => {
            let default_reason = Reason::parse(&reason).with_context(|| format!("--reason {reason:?}: expected hard_bounce, complaint, unsubscribe, soft_bounce_limit or manual"))?;
            let key = run_key(config, &server, &tenant, Scope::SuppressionsWrite)?;
            rt.block_on(import(&base(config, &server), &key.secret, &file, default_reason))
        }
        Command::Export { tenant, reason, stream, output, server } => {
            let key = run_key(config, &server, &tenant, Scope::SuppressionsRead)?;
            rt.block_on(export(&base(config, &server), &key.secret, reason, stream, output))?;
            Ok(0)
        }
    }
}

/// Posts the file in batches of 1,000; prints the refused lines; 1 when any was refused.
async fn import(base: &str, key: &str, file: &PathBuf, default_reason: Reason) -> anyhow::Result<i32> {
    let size = std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?.len();
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).trim(csv::Trim::All).comment(Some(b'#')).from_path(file)?;
    let bar = ProgressBar::new(size).with_style(ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()));
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/suppressions/import");
    let mut columns = Columns { address: 0, reason: Some(1), stream: Some(2), note: Some(3) };
    let (mut accepted, mut refused) = (0usize, Vec::<(u64, String)>::new());
    let mut batch: Vec<(u64, Value)> = Vec::new();
    let mut first = true;
    let mut record = csv::StringRecord::new();
    loop {
        let more = match reader.read_record(&mut record) {
            Ok(more) => more,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                refused.push((line, format!("unreadable CSV: {e}")));
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    bail!("reading {}: {e}", file.display());
                }
                continue;
            }
        };
        if more {
            let line = record.position().map_or(0, |p| p.line());
            bar.set_position(record.position().map_or(0, |p| p.byte()));
            if first {
                first = false;
                if let Some(c) = header(&record) {
                    columns = c;
                    continue;
                }
            }
            let get = |i: Option<usize>| i.and_then(|i| record.get(i)).map(str::trim).filter(|v| !v.is_empty());
            let Some(address) = get(Some(columns.address)) else {
                refused.push((line, "no address".into()));
                continue;
            };
            let mut note = get(columns.note).map(str::to_string);
            let reason = match get(columns.reason) {
                None => default_reason,
                Some(v) => reason_of(v).unwrap_or_else(|| {
                    note.get_or_insert_with(|| v.to_string());
                    default_reason
                }),
            };
            let mut entry = json!({"address": address, "reason": reason.as_str()});
            if let Some(s) = get(columns.stream) {
                entry["stream"] = s.to_ascii_lowercase().into();
            }
            if let Some(n) = note {
                entry["note"] = n.chars().filter(|c| !c.is_control()).take(1000).collect::<String>().into();
            }
            batch.push((line, entry));
        }
        if batch.len() == mailpipe_suppression::api::MAX_BATCH || (!more && !batch.is_empty()) {
            let entries: Vec<Value> = batch.iter().map(|(_, e)| e.clone()).collect();
            let answer = post(&client, &url, key, &json!({ "entries": entries })).await?;
            accepted += answer["accepted"].as_u64().unwrap_or(0) as usize;
            for r in answer["refused"].as_array().into_iter().flatten() {
                let i = r["index"].as_u64().unwrap_or(0) as usize;
                let line = batch.get(i).map_or(0, |(l, _)| *l);
                refused.push((line, format!("{}: {}", r["field"].as_str().unwrap_or(""), r["reason"].as_str().unwrap_or(""))));
            }
            batch.clear();
            bar.set_message(format!("{accepted} accepted, {} refused", refused.len()));
        }
        if !more {
            break;
        }
    }
    bar.finish_and_clear();
    refused.sort();
    for (line, why) in &refused {
        eprintln!("line {line}: {why}");
    }
    eprintln!("{accepted} addresses imported, {} lines refused, from {}", refused.len(), file.display());
    Ok(if refused.is_empty() { 0 } else { 1 })
}

async fn post(client: &reqwest::Client, url: &str, key: &str, body: &Value) -> anyhow::Result<Value> {
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        let r = client.post(url).bearer_auth(key).json(body).send().await.with_context(|| format!("posting to {url}"))?;
        let status = r.status().as_u16();
        if status == 429 || status == 503 {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(10));
            continue;
        }
        let text = r.text().await?;
        if status != 202 {
            bail!("{url} answered {status}: {text}");
        }
        return Ok(serde_json::from_str(&text)?);
    }
}

async fn export(base: &str, key: &str, reason: Option<String>, stream: Option<String>, output: Option<PathBuf>) -> anyhow::Result<()> {
    let out: Box<dyn std::io::Write> = match &output {
        Some(path) => Box::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut w = csv::Writer::from_writer(out);
    w.write_record(["address", "reason", "stream", "since", "expires_at", "source", "campaign", "status", "diagnostic", "note"])?;
    let client = reqwest::Client::new();
    let bar = ProgressBar::new_spinner().with_message("exporting");
    let mut cursor: Option<String> = None;
    let mut rows = 0u64;
    loop {
        let mut query: Vec<(&str, String)> = vec![("limit", "1000".into())];
        if let Some(r) = &reason {
            query.push(("reason", r.clone()));
        }
        if let Some(s) = &stream {
            query.push(("stream", s.clone()));
        }
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let url = format!("{base}/v1/suppressions");
        let r = client.get(&url).bearer_auth(key).query(&query).send().await.with_context(|| format!("reading {url}"))?;
        let status = r.status().as_u16();
        if status == 429 || status == 503 {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            continue;
        }
        let text = r.text().await?;
        if status != 200 {
            bail!("{url} answered {status}: {text}");
        }
        let page: Value = serde_json::from_str(&text)?;
        for e in page["entries"].as_array().into_iter().flatten() {
            let s = |v: &Value| v.as_str().unwrap_or("").to_string();
            let p = &e["provenance"];
            w.write_record([s(&e["address"]), s(&e["reason"]), s(&e["stream"]), s(&e["since"]), s(&e["expires_at"]), s(&p["source"]), s(&p["campaign"]), s(&p["status"]), s(&p["diagnostic"]), s(&p["note"])])?;
            rows += 1;
        }
        bar.set_message(format!("{rows} exported"));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    w.flush()?;
    bar.finish_and_clear();
    eprintln!("{rows} suppressions exported{}", output.map(|p| format!(" to {}", p.display())).unwrap_or_default());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exports_of_other_platforms_are_recognised() {
        let h = |s: &str| header(&csv::StringRecord::from(s.split(',').collect::<Vec<_>>()));
        assert_eq!(h("EmailAddress,Reason,LastUpdateTime"), Some(Columns { address: 0, reason: Some(1), stream: None, note: None }));
        assert_eq!(h("EmailAddress,SuppressionReason,Origin,CreatedAt"), Some(Columns { address: 0, reason: Some(1), stream: None, note: None }));
        assert_eq!(h("address,code,error,created_at"), Some(Columns { address: 0, reason: None, stream: None, note: Some(2) }));
        assert_eq!(h("email,created,status,reason").map(|c| (c.address, c.reason)), Some((0, Some(3))));
        assert_eq!(h("ana@x.com,hard_bounce"), None, "a first line that is data");
        assert_eq!(reason_of("BOUNCE"), Some(Reason::HardBounce));
        assert_eq!(reason_of("SpamComplaint"), Some(Reason::Complaint));
        assert_eq!(reason_of("ManualSuppression"), Some(Reason::Manual));
        assert_eq!(reason_of("550 5.1.1 user unknown"), None);
    }
}
