//! The `mailpipe` command: every role and tool of mailpipe in one binary.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use mailpipe::demo::{Generator, Profile, DEMO_TENANTS};
use mailpipe::{telemetry, App};
use mailpipe_config::Config;
use mailpipe_tenants::{NewKey, Registry, Scope, Tier};
use mailpipe_tokens::{Claims, Kind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod suppressions_cli;

/// mimalloc: the edge allocates a little per hit, and glibc's malloc showed up in profiles.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "mailpipe", version, about = "Analytics and deliverability pipeline for email senders")]
struct Cli {
    /// TOML configuration file (see deploy/mailpipe.example.toml); MAILPIPE__* variables override it.
    #[arg(long, global = true, env = "MAILPIPE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every role in one process (on the embedded backends unless configured otherwise).
    Serve {
        /// Fill the store with generated traffic first (skipped if the demo tenants exist).
        #[arg(long)]
        demo: bool,
    },
    /// Run the HTTP edge only (events, inbound mail, tracking hits -> bus).
    Ingest,
    /// Run the processors only (bus -> classifier -> store); run as many as the bus has
    /// partitions to share.
    Process,
    /// Run the HTTP API and dashboard only.
    Query,
    /// Apply the store's pending schema migrations (ClickHouse) and exit.
    Migrate,
    /// Print a tracking URL.
    Url {
        kind: UrlKind,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        campaign: String,
        #[arg(long)]
        message_id: String,
        #[arg(long)]
        recipient: String,
        #[arg(long, default_value = "")]
        variant: String,
        /// Destination of a click URL (http or https).
        #[arg(long)]
        link: Option<String>,
        /// Stream the message is sent on (`marketing`, ...), for an unsubscribe URL: the
        /// unsubscribe then suppresses that stream only. Without it, every stream.
        #[arg(long)]
        stream: Option<String>,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage tenants.
    Tenants {
        #[command(subcommand)]
        command: TenantsCommand,
    },
    /// Hand one raw message from standard input to a running mailpipe (`POST /v1/inbound`),
    /// for an MTA's pipe transport. Exits 0 once it is durable, 75 (EX_TEMPFAIL) when the
    /// server cannot take it now, 77 for a bad key, 65 for a message it refuses.
    Inbound {
        /// Base URL of the mailpipe edge (default: http.public_url).
        #[arg(long)]
        url: Option<String>,
        /// A write key of the tenant the mail belongs to.
        #[arg(long, env = "MAILPIPE_API_KEY", hide_env_values = true)]
        key: String,
    },
    /// Import or export a tenant's suppression list as CSV.
    Suppressions {
        #[command(subcommand)]
        command: suppressions_cli::Command,
    },
    /// Classify raw messages (bounce, complaint, auto-reply, reply): one JSON object per file,
    /// one per line.
    Inspect {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Benchmarks that print figures (see the README's figures section).
    Bench {
        #[command(subcommand)]
        command: mailpipe::bench::BenchCommand,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum UrlKind {
    Open,
    Click,
    Unsubscribe,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create an API key; it is printed once and stored hashed.
    Create {
        #[arg(long)]
        tenant: String,
        /// What the key may do, comma-separated: events:write, inbound:write, stats:read,
        /// suppressions:read, suppressions:write, alerts:write, exports:read, admin (the older
        /// read, write and admin are accepted too).
        #[arg(long, value_name = "S[,S...]")]
        scope: String,
        /// A name to recognise the key by in `keys list` (a sending node, a dashboard).
        #[arg(long, default_value = "")]
        name: String,
        /// Rate-limit tier (`http.rate_limits`): starter, pro or enterprise.
        #[arg(long, default_value = "starter")]
        tier: String,
        /// Requests a minute for this key, instead of its tier's.
        #[arg(long)]
        rate_limit: Option<u32>,
        /// Lifetime, such as 90d or 12h; default: no expiry.
        #[arg(long)]
        expires: Option<String>,
    },
    /// List API keys (never their secrets).
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API key by its id (as `keys list` shows it); running servers refuse it
    /// within a second.
    Revoke { id: String },
}

/// `90d`, `12h`, `30m`.
fn lifetime(s: &str) -> anyhow::Result<chrono::Duration> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = n.parse().ok().filter(|n| *n > 0 && *n <= 36_500).with_context(|| format!("--expires {s:?}: expected a number then d, h or m, such as 90d"))?;
    Ok(match unit {
        "d" => chrono::Duration::days(n),
        "h" => chrono::Duration::hours(n),
        "m" => chrono::Duration::minutes(n),
        _ => bail!("--expires {s:?}: expected a number then d, h or m, such as 90d"),
    })
}

fn keys(registry: &Registry, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create { tenant, scope, name, tier, rate_limit, expires } => {
            if rate_limit == Some(0) {
                bail!("--rate-limit must be at least 1 request a minute");
            }
            let mut new = NewKey::new(&tenant, &Scope::parse_list(&scope)?);
            new.name = name;
            new.tier = Tier::parse(&tier)?;
            new.rate_limit_per_minute = rate_limit;
            new.expires_at = expires.as_deref().map(lifetime).transpose()?.map(|d| chrono::Utc::now() + d);
            println!("{}", registry.create_api_key(new)?);
        }
        KeysCommand::List { tenant, json } => {
            let keys = registry.list_api_keys(tenant.as_deref());
            let when = |t: Option<chrono::DateTime<chrono::Utc>>| t.map_or("-".to_string(), |t| t.format("%Y-%m-%d %H:%M").to_string());
            if json {
                for k in &keys {
                    println!("{}", serde_json::to_string(k)?);
                }
            } else {
                println!("{:<12}  {:<16}  {:<20}  {:<10}  {:<16}  {:<16}  {:<16}  SCOPES", "ID", "TENANT", "NAME", "TIER", "CREATED", "LAST USED", "EXPIRES");
                for k in &keys {
                    let tier = match k.rate_limit_per_minute {
                        Some(n) => format!("{n}/min"),
                        None => k.tier.as_str().to_string(),
                    };
                    let scopes: Vec<&str> = k.scopes.iter().map(|s| s.as_str()).collect();
                    println!(
                        "{:<12}  {:<16}  {:<20}  {:<10}  {:<16}  {:<16}  {:<16}  {}",
                        k.id, k.tenant, if k.name.is_empty() { "-" } else { &k.name }, tier, when(k.created_at), when(k.last_used_at), when(k.expires_at), scopes.join(",")
                    );
                }
            }
        }
        KeysCommand::Revoke { id } => {
            registry.revoke_api_key(&id)?;
            eprintln!("revoked {id}; running servers refuse it within a second");
        }
    }
    Ok(())
}

#[derive(Subcommand)]
enum TenantsCommand {
    /// Create a tenant with a fresh signing key.
    Create { id: String },
    /// List tenants.
    List,
    /// Add a signing key; links signed with older keys keep working.
    RotateKey { id: String },
    /// Revoke a signing key (leaked, say): links signed with it stop redirecting and counting
    /// on every running server within a second. Revoking the active key makes a fresh one.
    RevokeKey { id: String, kid: String },
    /// Print the tenant's active signing key (key id and base64url secret), for sending
    /// nodes that mint tracking URLs themselves.
    ShowKey { id: String },
}

/// The async runtime: `worker_threads` threads, or one per core.
fn runtime(config: &Config) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        builder.worker_threads(config.worker_threads);
    }
    builder.enable_all().build()
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve { demo } => {
            telemetry::init_logs();
            telemetry::metrics();
            runtime(&config)?.block_on(serve(config, demo))
        }
        Command::Ingest | Command::Process | Command::Query => {
            telemetry::init_logs();
            let role = match cli.command {
                Command::Ingest => mailpipe::Role::Ingest,
                Command::Process => mailpipe::Role::Process,
                _ => mailpipe::Role::Query,
            };
            runtime(&config)?.block_on(mailpipe::run_role(config, role, shutdown_signal()))
        }
        Command::Migrate => {
            telemetry::init_logs();
            let mailpipe_config::StoreConfig::Clickhouse(c) = &config.store else {
                bail!("`migrate` is for the ClickHouse store; the embedded store needs no migrations")
            };
            let ch = mailpipe::clickhouse_config(c);
            let applied = tokio::runtime::Runtime::new()?
                .block_on(mailpipe_store::clickhouse::ClickHouseEventStore::migrate(&ch))
                .with_context(|| format!("migrating ClickHouse at {}", c.url))?;
            match applied.as_slice() {
                [] => println!("{}: schema is up to date", c.database),
                v => println!("{}: applied migrations {v:?}", c.database),
            }
            Ok(())
        }
        Command::Url { kind, tenant, campaign, message_id, recipient, variant, link, stream } => {
            let registry = Registry::open(config.registry_path())?;
            let kind = match kind {
                UrlKind::Open => Kind::Open,
                UrlKind::Click => Kind::Click,
                UrlKind::Unsubscribe => Kind::Unsubscribe,
            };
            let link = match (kind, link, stream) {
                (Kind::Click, None, _) => bail!("a click URL needs --link"),
                (Kind::Click, Some(l), None) => l,
                (Kind::Unsubscribe, None, Some(s)) => s,
                (_, Some(_), _) => bail!("--link is only for click URLs"),
                (_, _, Some(_)) => bail!("--stream is only for unsubscribe URLs"),
                (_, None, None) => String::new(),
            };
            let claims = Claims { kind, key_id: String::new(), tenant, campaign, variant, message_id, recipient, link };
            let token = registry.mint(claims)?;
            println!("{}{}{token}", config.http.public_url.trim_end_matches('/'), kind.path_prefix());
            Ok(())
        }
        Command::Keys { command } => keys(&Registry::open(config.registry_path())?, command),
        Command::Tenants { command } => {
            let registry = Registry::open(config.registry_path())?;
            match command {
                TenantsCommand::Create { id } => registry.create_tenant(&id)?,
                TenantsCommand::List => registry.tenants().iter().for_each(|t| println!("{t}")),
                TenantsCommand::RotateKey { id } => println!("{}", registry.rotate_signing_key(&id)?),
                TenantsCommand::RevokeKey { id, kid } => {
                    let active = registry.revoke_signing_key(&id, &kid)?;
                    println!("revoked {kid} of {id}; {active} signs new links");
                }
                TenantsCommand::ShowKey { id } => {
                    let (kid, key) = registry.active_signing_key(&id)?;
                    use base64::Engine;
                    println!("{kid} {}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key));
                }
            }
            Ok(())
        }
        Command::Inbound { url, key } => {
            use std::io::Read;
            let mut raw = Vec::new();
            std::io::stdin().read_to_end(&mut raw)?;
            if raw.len() > mailpipe_schemas::INBOUND_MAX_BYTES {
                eprintln!("mailpipe inbound: the message is {} bytes; mailpipe takes at most {}", raw.len(), mailpipe_schemas::INBOUND_MAX_BYTES);
                std::process::exit(65);
            }
            let url = format!("{}/v1/inbound", url.unwrap_or(config.http.public_url).trim_end_matches('/'));
            let code = tokio::runtime::Runtime::new()?.block_on(async {
                match reqwest::Client::new().post(&url).bearer_auth(key).body(raw).send().await {
                    Ok(r) if r.status().as_u16() == 202 => 0,
                    Ok(r) => {
                        let status = r.status().as_u16();
                        eprintln!("mailpipe inbound: {url} answered {status}: {}", r.text().await.unwrap_or_default());
                        match status {
                            401 | 403 => 77,
                            400 | 413 => 65,
                            _ => 75,
                        }
                    }
                    Err(e) => {
                        eprintln!("mailpipe inbound: {url}: {e}");
                        75
                    }
                }
            });
            std::process::exit(code);
        }
        Command::Suppressions { command } => {
            let code = suppressions_cli::run(&config, command)?;
            std::process::exit(code);
        }
        Command::Inspect { files } => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            for file in files {
                let shown = file.display().to_string();
                let line = match std::fs::read(&file) {
                    Ok(raw) => mailpipe_inbound::inspect_json(&shown, &raw),
                    Err(e) => serde_json::json!({ "file": shown, "kind": "error", "error": e.to_string() }),
                };
                writeln!(out, "{line}")?;
            }
            Ok(())
        }
        Command::Bench { command } => {
            telemetry::init_logs();
            runtime(&config)?.block_on(mailpipe::bench::run(command, config))
        }
    }
}

async fn serve(config: Config, demo: bool) -> anyhow::Result<()> {
    let listen = config.http.listen;
    let public_url = config.http.public_url.clone();
    let app = App::open(config).await?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    let running = app.start(listener).await?;
    if demo {
        load_demo(&running).await?;
    }
    eprintln!("\nmailpipe is running at http://{}", running.addr);
    if demo {
        // A fresh key per start (keys are stored hashed, so old ones cannot be shown again),
        // for a week.
        for tenant in DEMO_TENANTS {
            let mut new = NewKey::new(tenant, &[Scope::StatsRead, Scope::SuppressionsRead]);
            new.name = "demo dashboard".into();
            new.tier = Tier::Pro;
            new.expires_at = Some(chrono::Utc::now() + chrono::Duration::days(7));
            let key = running.app.registry.create_api_key(new)?;
            println!("dashboard for {tenant}: {}/#key={key}", public_url.trim_end_matches('/'));
            println!("  suppression list: {}/suppressions#key={key}", public_url.trim_end_matches('/'));
            println!("  api key (stats:read, suppressions:read): {key}");
        }
        eprintln!("API documentation: {}/docs", public_url.trim_end_matches('/'));
    } else if running.app.registry.tenants().is_empty() {
        eprintln!("no tenants yet: `mailpipe tenants create ID`, then `mailpipe keys create --tenant ID --scope events:write`");
    }
    eprintln!("press Ctrl-C to stop");
    shutdown_signal().await;
    eprintln!("stopping: draining the bus into the store…");
    running.shutdown().await
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// What the generated traffic leaves out of the suppression list: per tenant, a few mailboxes
/// that soft-bounce past the policy (as events), and a few suppressed by hand (as requests of
/// the suppressions API would be). Returns the events published.
async fn demo_suppressions(running: &mailpipe::Running) -> anyhow::Result<usize> {
    use mailpipe_schemas::{BounceClass, Event, EventType};
    use mailpipe_suppression::entry::{Op, Reason, Request, RECORD_VERSION};
    let now = chrono::Utc::now();
    let mut events = Vec::new();
    let mut requests = Vec::new();
    for tenant in DEMO_TENANTS {
        for i in 0..3 {
            let recipient = format!("full{i}@{tenant}-customers.example");
            for k in 0..5i64 {
                let at = now - chrono::Duration::days(6 - k) - chrono::Duration::hours(i);
                events.push(Event {
                    campaign: format!("{tenant}-newsletter"),
                    message_id: format!("<full{i}-{k}@mail.{tenant}.example>"),
                    recipient: recipient.clone(),
                    bounce_class: Some(BounceClass::Soft),
                    status: Some("4.2.2".into()),
                    reason: Some("452 4.2.2 mailbox full".into()),
                    ..Event::new(mailpipe_schemas::derived_id(&[b"demo-soft", tenant.as_bytes(), &[i as u8, k as u8]]), tenant, EventType::Bounced, at)
                });
            }
        }
        for (address, note) in [("legal@competitor.example", "asked by their counsel"), ("ceo@" , "VIP: never mail from campaigns")] {
            let address = if address.ends_with('@') { format!("{address}{tenant}.example") } else { address.to_string() };
            let id = mailpipe_schemas::derived_id(&[b"demo-manual", tenant.as_bytes(), address.as_bytes()]);
            let op = Op::Suppress { reason: Reason::Manual, stream: None, expires_at: None };
            requests.push(Request { v: RECORD_VERSION, id, tenant: tenant.to_string(), address, at: now, by: "demo".into(), source: "api".into(), note: Some(note.into()), op });
        }
    }
    mailpipe_ingest::publish(running.app.bus.as_ref(), &events).await?;
    let messages = requests
        .iter()
        .map(|r| mailpipe_bus::Message { key: format!("{}\0{}", r.tenant, r.address).into_bytes(), payload: serde_json::to_vec(r).unwrap_or_default() })
        .collect();
    running.app.bus.publish(mailpipe_bus::SUPPRESSION_REQUESTS_TOPIC, messages).await?;
    Ok(events.len())
}

async fn load_demo(running: &mailpipe::Running) -> anyhow::Result<()> {
    let registry = &running.app.registry;
    let existing = registry.tenants();
    if DEMO_TENANTS.iter().all(|t| existing.iter().any(|e| e == t)) {
        eprintln!("demo data is already loaded in {} (delete the directory to start over)", running.app.config.data_dir.display());
        return Ok(());
    }
    for t in DEMO_TENANTS {
        if !existing.iter().any(|e| e == t) {
            registry.create_tenant(t)?;
        }
    }
    let started = Instant::now();
    let before = running.app.store.count().await? as usize;
    let generator = Generator::new(Profile::demo(), chrono::Utc::now());
    let bar = ProgressBar::new(generator.planned_messages() as u64).with_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} messages ({per_sec})").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("generating");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Vec<mailpipe_schemas::Event>, usize)>(4);
    let producer = std::thread::spawn(move || generator.run(5000, |chunk, done| { let _ = tx.blocking_send((chunk, done)); }));
    let mut published = 0;
    while let Some((chunk, done)) = rx.recv().await {
        mailpipe_ingest::publish(running.app.bus.as_ref(), &chunk).await?;
        published += chunk.len();
        bar.set_position(done as u64);
    }
    producer.join().map_err(|_| anyhow::anyhow!("demo generator panicked"))?;
    published += demo_suppressions(running).await?;
    bar.finish_with_message("published");
    let bar = ProgressBar::new(published as u64).with_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} events").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("storing");
    let target = before + published;
    loop {
        let stored = running.app.store.count().await? as usize;
        if stored >= target {
            break;
        }
        bar.set_position(stored.saturating_sub(before) as u64);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.app.store.flush().await?;
    bar.finish_with_message("stored");
    eprintln!("demo: {published} events for {} tenants in {:.1} s", DEMO_TENANTS.len(), started.elapsed().as_secs_f64());
    Ok(())
}
