//! The tenant registry: each tenant's signing keys (for tracking tokens) and its API keys,
//! kept in one JSON file under the data directory. API keys are stored as SHA-256 hashes only.
//! Every change is a read-modify-write under an exclusive file lock; every process reading the
//! file looks for changes at least every [`RELOAD_EVERY`].

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use mailpipe_tokens::{Claims, Kind, TokenError};
use chrono::{DateTime, Utc};
use parking_lot::{Mutex, RwLock};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("reading or writing {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid registry: {source}")]
    Corrupt { path: PathBuf, source: serde_json::Error },
    #[error("tenant id {0:?} is invalid: use 1 to 64 of a-z, 0-9, '-' and '_'")]
    InvalidTenantId(String),
    #[error("tenant {0:?} already exists")]
    TenantExists(String),
    #[error("tenant {0:?} does not exist")]
    UnknownTenant(String),
    #[error("scope {0:?} is invalid: use {scopes}", scopes = Scope::ALL.map(Scope::as_str).join(", "))]
    InvalidScope(String),
    #[error("tier {0:?} is invalid: use starter, pro or enterprise")]
    InvalidTier(String),
    #[error("a key needs at least one scope")]
    NoScope,
    #[error("API key {0:?} does not exist")]
    UnknownApiKey(String),
    #[error("tenant {tenant:?} has no signing key {kid:?}")]
    UnknownSigningKey { tenant: String, kid: String },
    #[error("cannot make a token: {0}")]
    Token(#[from] TokenError),
}

/// What an API key may do. `admin` may do everything of its tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    #[serde(rename = "events:write")]
    EventsWrite,
    #[serde(rename = "inbound:write")]
    InboundWrite,
    #[serde(rename = "stats:read")]
    StatsRead,
    #[serde(rename = "suppressions:read")]
    SuppressionsRead,
    #[serde(rename = "suppressions:write")]
    SuppressionsWrite,
    #[serde(rename = "alerts:write")]
    AlertsWrite,
    #[serde(rename = "exports:read")]
    ExportsRead,
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 8] = [
        Scope::EventsWrite,
        Scope::InboundWrite,
        Scope::StatsRead,
        Scope::SuppressionsRead,
        Scope::SuppressionsWrite,
        Scope::AlertsWrite,
        Scope::ExportsRead,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::EventsWrite => "events:write",
            Scope::InboundWrite => "inbound:write",
            Scope::StatsRead => "stats:read",
            Scope::SuppressionsRead => "suppressions:read",
            Scope::SuppressionsWrite => "suppressions:write",
            Scope::AlertsWrite => "alerts:write",
            Scope::ExportsRead => "exports:read",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Scope, RegistryError> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s).ok_or_else(|| RegistryError::InvalidScope(s.to_string()))
    }

    /// `events:write,stats:read`, or the scopes of a key made before scopes were narrow
    /// (`read`, `write`, `admin`).
    pub fn parse_list(s: &str) -> Result<Vec<Scope>, RegistryError> {
        let mut scopes = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match LegacyScope::parse(name) {
                Some(legacy) => scopes.extend_from_slice(legacy.scopes()),
                None => scopes.push(Scope::parse(name)?),
            }
        }
        scopes.sort();
        scopes.dedup();
        if scopes.is_empty() {
            return Err(RegistryError::NoScope);
        }
        Ok(scopes)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The three scopes of keys made before scopes were narrow, as they are read from an older
/// registry: each stands for the set of scopes that covers what it allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum LegacyScope {
    Read,
    Write,
    Admin,
}

impl LegacyScope {
    fn parse(s: &str) -> Option<LegacyScope> {
        match s {
            "read" => Some(LegacyScope::Read),
            "write" => Some(LegacyScope::Write),
            "admin" => Some(LegacyScope::Admin),
            _ => None,
        }
    }
    fn scopes(self) -> &'static [Scope] {
        match self {
            LegacyScope::Read => &[Scope::StatsRead, Scope::SuppressionsRead, Scope::ExportsRead],
            LegacyScope::Write => &[Scope::EventsWrite, Scope::InboundWrite, Scope::SuppressionsWrite],
            LegacyScope::Admin => &[Scope::Admin],
        }
    }
}

/// A key's rate-limit tier (`http.rate_limits`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    #[default]
    Starter,
    Pro,
    Enterprise,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Starter, Tier::Pro, Tier::Enterprise];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Starter => "starter",
            Tier::Pro => "pro",
            Tier::Enterprise => "enterprise",
        }
    }

    pub fn parse(s: &str) -> Result<Tier, RegistryError> {
        Tier::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| RegistryError::InvalidTier(s.to_string()))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKey {
    pub kid: String,
    /// base64url of the key bytes.
    pub secret: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    pub id: String,
    /// Every key still accepted; the last one signs new tokens, so a rotation keeps old links working.
    pub signing_keys: Vec<SigningKey>,
    /// Ids of revoked signing keys, never given to a new key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_kids: Vec<String>,
}

impl Tenant {
    /// Adds a fresh signing key, which signs new tokens from now on; returns its id.
    fn add_signing_key(&mut self) -> String {
        let number = |kid: &String| kid.strip_prefix('k').and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        let highest = self.signing_keys.iter().map(|k| &k.kid).chain(&self.revoked_kids).map(number).max().unwrap_or(0);
        let kid = format!("k{}", highest + 1);
        self.signing_keys.push(SigningKey { kid: kid.clone(), secret: URL_SAFE_NO_PAD.encode(random::<32>()) });
        kid
    }
}

/// An API key as the registry file holds it: never the secret, only its SHA-256.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKey {
    id: String,
    tenant: String,
    /// Written by releases before narrow scopes; read, then written back as `scopes`.
    #[serde(default, skip_serializing)]
    scope: Option<LegacyScope>,
    #[serde(default)]
    scopes: Vec<Scope>,
    sha256: String,
    #[serde(default)]
    name: String,
    /// Absent on keys made before tiers: those are `enterprise`, so that no sending node
    /// running before the upgrade is suddenly limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tier: Option<Tier>,
    /// Requests a minute, instead of the tier's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate_limit_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_used_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    fn tier(&self) -> Tier {
        self.tier.unwrap_or(Tier::Enterprise)
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    tenants: Vec<Tenant>,
    api_keys: Vec<ApiKey>,
}

/// Who an API key belongs to, and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    /// The key's id (the public part of the key).
    pub key_id: String,
    pub scopes: Vec<Scope>,
    pub tier: Tier,
    /// Requests a minute set on this key, instead of its tier's.
    pub rate_limit_per_minute: Option<u32>,
}

impl Principal {
    /// Whether this key may do what `needed` allows.
    pub fn allows(&self, needed: Scope) -> bool {
        self.scopes.iter().any(|&s| s == Scope::Admin || s == needed)
    }
}

/// What `keys create` asks for.
#[derive(Clone, Debug)]
pub struct NewKey {
    pub tenant: String,
    pub scopes: Vec<Scope>,
    pub name: String,
    pub tier: Tier,
    pub rate_limit_per_minute: Option<u32>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl NewKey {
    pub fn new(tenant: &str, scopes: &[Scope]) -> NewKey {
        NewKey { tenant: tenant.into(), scopes: scopes.to_vec(), name: String::new(), tier: Tier::Starter, rate_limit_per_minute: None, expires_at: None }
    }
}

/// What `keys list` shows of a key (never its secret).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub tier: Tier,
    pub rate_limit_per_minute: Option<u32>,
    pub created_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Why a key was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this is not a mailpipe API key, or it was mistyped (its checksum does not match)")]
    Malformed,
    #[error("unknown API key (revoked, or never created)")]
    Unknown,
    #[error("this API key has expired")]
    Expired,
}

/// Signing keys by tenant, then key id: looked up by `&str` on every tracking hit.
type KeyCache = HashMap<String, HashMap<String, Vec<u8>>>;

/// The registry file as this process last read it, with what the hot paths look up decoded
/// once: signing keys (a token is verified per tracking hit) and API keys by id.
struct Loaded {
    state: State,
    version: Option<FileVersion>,
    signing: KeyCache,
    api: HashMap<String, usize>,
}

impl Loaded {
    fn new(mut state: State, version: Option<FileVersion>) -> Loaded {
        let mut signing = KeyCache::new();
        for t in &state.tenants {
            for k in &t.signing_keys {
                if let Ok(bytes) = URL_SAFE_NO_PAD.decode(&k.secret) {
                    signing.entry(t.id.clone()).or_default().insert(k.kid.clone(), bytes);
                }
            }
        }
        // Keys of older files get the scopes their legacy scope stands for, once, here.
        for k in &mut state.api_keys {
            if let (true, Some(legacy)) = (k.scopes.is_empty(), k.scope.take()) {
                k.scopes = legacy.scopes().to_vec();
            }
        }
        let api = state.api_keys.iter().enumerate().map(|(i, k)| (k.id.clone(), i)).collect();
        Loaded { state, version, signing, api }
    }
}

/// What tells that the file changed: its modification time and length.
type FileVersion = (SystemTime, u64);

/// How often a process looks whether another one changed the file (a key revoked, a
/// signing key removed): the longest a revoked key keeps working.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

pub struct Registry {
    path: PathBuf,
    loaded: RwLock<Loaded>,
    /// When the file was last looked at, in milliseconds since `opened`.
    looked_at: AtomicU64,
    opened: Instant,
    /// When each key was last used, by key id, as this process saw it; written to the file
    /// by [`Registry::save_last_used`].
    used: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl Registry {
    /// Opens the registry at `path`, empty if the file does not exist yet.
    pub fn open(path: impl Into<PathBuf>) -> Result<Registry, RegistryError> {
        let path = path.into();
        let loaded = load(&path)?;
        Ok(Registry {
            path,
            loaded: RwLock::new(loaded),
            looked_at: AtomicU64::new(0),
            opened: Instant::now(),
            used: Mutex::new(HashMap::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tenants(&self) -> Vec<String> {
        self.loaded.read().state.tenants.iter().map(|t| t.id.clone()).collect()
    }

    pub fn create_tenant(&self, id: &str) -> Result<(), RegistryError> {
        if id.is_empty()
            || id.len() > 64
            || !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(RegistryError::InvalidTenantId(id.to_string()));
        }
        self.update(|state| {
            if state.tenants.iter().any(|t| t.id == id) {
                return Err(RegistryError::TenantExists(id.to_string()));
            }
            let mut tenant = Tenant { id: id.to_string(), signing_keys: Vec::new(), revoked_kids: Vec::new() };
            tenant.add_signing_key();
            state.tenants.push(tenant);
            Ok(())
        })
    }

    /// Adds a new signing key for `tenant`; tokens signed with the older ones stay valid.
    pub fn rotate_signing_key(&self, tenant: &str) -> Result<String, RegistryError> {
        self.update(|state| Ok(find_tenant(state, tenant)?.add_signing_key()))
    }

    /// Revokes a signing key of `tenant` (leaked, say): links signed with it stop redirecting
    /// and counting in every running process within [`RELOAD_EVERY`]. Revoking the key that
    /// signs new tokens adds a fresh one first. Returns the id of the key that signs now.
    pub fn revoke_signing_key(&self, tenant: &str, kid: &str) -> Result<String, RegistryError> {
        self.update(|state| {
            let t = find_tenant(state, tenant)?;
            let Some(at) = t.signing_keys.iter().position(|k| k.kid == kid) else {
                return Err(RegistryError::UnknownSigningKey { tenant: tenant.into(), kid: kid.into() });
            };
            if at + 1 == t.signing_keys.len() {
                t.add_signing_key();
            }
            t.signing_keys.remove(at);
            t.revoked_kids.push(kid.to_string());
            Ok(t.signing_keys.last().map(|k| k.kid.clone()).unwrap_or_default())
        })
    }

    /// The key that signs new tokens of `tenant`: (key id, key bytes).
    pub fn active_signing_key(&self, tenant: &str) -> Result<(String, Vec<u8>), RegistryError> {
        self.refresh_if_changed();
        let loaded = self.loaded.read();
        let t = loaded.state.tenants.iter().find(|t| t.id == tenant).ok_or_else(|| RegistryError::UnknownTenant(tenant.into()))?;
        let key = t.signing_keys.last().ok_or_else(|| RegistryError::UnknownTenant(tenant.into()))?;
        Ok((key.kid.clone(), URL_SAFE_NO_PAD.decode(&key.secret).unwrap_or_default()))
    }

    /// Mints a token with the tenant's active key.
    pub fn mint(&self, mut claims: Claims) -> Result<String, RegistryError> {
        let (kid, key) = self.active_signing_key(&claims.tenant)?;
        claims.key_id = kid;
        Ok(mailpipe_tokens::mint(&claims, &key)?)
    }

    /// Verifies a tracking token against the tenant's keys, in memory (the file is looked at
    /// every [`RELOAD_EVERY`], for revoked keys). A token naming a key
    /// this process does not know makes it look whether the file changed (a tenant created or
    /// a key rotated by another process) and try once more.
    pub fn verify(&self, token: &str, kind: Kind) -> Result<Claims, TokenError> {
        // A key revoked by another process stops verifying within RELOAD_EVERY.
        self.refresh_now_and_then();
        let attempt = |unknown_key: &std::cell::Cell<bool>| {
            let loaded = self.loaded.read();
            mailpipe_tokens::verify(token, kind, |tenant, kid| {
                let key = loaded.signing.get(tenant).and_then(|keys| keys.get(kid)).map(Vec::as_slice);
                unknown_key.set(key.is_none());
                key
            })
        };
        let unknown_key = std::cell::Cell::new(false);
        match attempt(&unknown_key) {
            Err(_) if unknown_key.get() => {
                self.refresh_if_changed();
                attempt(&unknown_key)
            }
            result => result,
        }
    }

    /// Creates an API key and returns it; only its hash is stored, so this is the one chance
    /// to see it.
    pub fn create_api_key(&self, new: NewKey) -> Result<String, RegistryError> {
        if new.scopes.is_empty() {
            return Err(RegistryError::NoScope);
        }
        let id = hex(&random::<6>());
        let key = key_with_checksum(&format!("{KEY_PREFIX}{id}_{}", random_alphanumeric(SECRET_LEN)));
        let mut scopes = new.scopes.clone();
        scopes.sort();
        scopes.dedup();
        let api_key = ApiKey {
            id,
            tenant: new.tenant.clone(),
            scope: None,
            scopes,
            sha256: hex(&Sha256::digest(key.as_bytes())),
            name: new.name,
            tier: Some(new.tier),
            rate_limit_per_minute: new.rate_limit_per_minute,
            created_at: Some(Utc::now()),
            expires_at: new.expires_at,
            last_used_at: None,
        };
        self.update(|state| {
            find_tenant(state, &new.tenant)?;
            state.api_keys.push(api_key);
            Ok(())
        })?;
        Ok(key)
    }

    /// Every API key (of one tenant, or of all), without secrets.
    pub fn list_api_keys(&self, tenant: Option<&str>) -> Vec<KeyInfo> {
        self.refresh_if_changed();
        let used = self.used.lock().clone();
        let loaded = self.loaded.read();
        loaded
            .state
            .api_keys
            .iter()
            .filter(|k| tenant.is_none_or(|t| t == k.tenant))
            .map(|k| KeyInfo {
                id: k.id.clone(),
                tenant: k.tenant.clone(),
                name: k.name.clone(),
                scopes: k.scopes.clone(),
                tier: k.tier(),
                rate_limit_per_minute: k.rate_limit_per_minute,
                created_at: k.created_at,
                last_used_at: k.last_used_at.max(used.get(&k.id).copied()),
                expires_at: k.expires_at,
            })
            .collect()
    }

    /// Removes an API key: every running process refuses it within [`RELOAD_EVERY`].
    pub fn revoke_api_key(&self, id: &str) -> Result<(), RegistryError> {
        self.update(|state| {
            let before = state.api_keys.len();
            state.api_keys.retain(|k| k.id != id);
            if state.api_keys.len() == before {
                return Err(RegistryError::UnknownApiKey(id.to_string()));
            }
            Ok(())
        })
    }

    /// The tenant and scopes of an API key. A key with a bad checksum is refused without a
    /// lookup; keys created by another process (`mailpipe keys create`) are picked up at once,
    /// and keys revoked by another process are refused within [`RELOAD_EVERY`].
    pub fn authenticate(&self, key: &str) -> Result<Principal, AuthError> {
        let id = key_id(key)?;
        let hash = hex(&Sha256::digest(key.as_bytes()));
        let now = Utc::now();
        let lookup = |loaded: &Loaded| -> Result<Principal, AuthError> {
            let k = loaded.api.get(id).map(|&i| &loaded.state.api_keys[i]).ok_or(AuthError::Unknown)?;
            if !constant_time_eq(k.sha256.as_bytes(), hash.as_bytes()) {
                return Err(AuthError::Unknown);
            }
            if k.expires_at.is_some_and(|e| e <= now) {
                return Err(AuthError::Expired);
            }
            Ok(Principal {
                tenant: k.tenant.clone(),
                key_id: k.id.clone(),
                scopes: k.scopes.clone(),
                tier: k.tier(),
                rate_limit_per_minute: k.rate_limit_per_minute,
            })
        };
        self.refresh_now_and_then();
        // (The read guard must be gone before a refresh takes the write lock.)
        let first = lookup(&self.loaded.read());
        let principal = match first {
            Err(AuthError::Unknown) => {
                self.refresh_if_changed();
                lookup(&self.loaded.read())
            }
            result => result,
        }?;
        self.used.lock().insert(principal.key_id.clone(), now);
        Ok(principal)
    }

    /// Writes when each key was last used (as this process saw it) to the file, if any key
    /// was used since its recorded time by more than a minute. Serving roles call it every
    /// minute.
    pub fn save_last_used(&self) -> Result<(), RegistryError> {
        let used = self.used.lock().clone();
        let stale = {
            let loaded = self.loaded.read();
            loaded.state.api_keys.iter().any(|k| {
                used.get(&k.id).is_some_and(|u| k.last_used_at.is_none_or(|l| *u - l > chrono::Duration::minutes(1)))
            })
        };
        if !stale {
            return Ok(());
        }
        self.update(|state| {
            for k in &mut state.api_keys {
                k.last_used_at = k.last_used_at.max(used.get(&k.id).copied());
            }
            Ok(())
        })
    }

    /// Looks whether the file changed if that was not done for [`RELOAD_EVERY`].
    fn refresh_now_and_then(&self) {
        let now = self.opened.elapsed().as_millis() as u64;
        let last = self.looked_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= RELOAD_EVERY.as_millis() as u64
            && self.looked_at.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.refresh_if_changed();
        }
    }

    fn refresh_if_changed(&self) {
        let version = file_version(&self.path);
        if version != self.loaded.read().version {
            if let Ok(loaded) = load(&self.path) {
                *self.loaded.write() = loaded;
            }
        }
    }

    /// Read-modify-write of the file under an exclusive lock (`registry.json.lock`), so that
    /// tools and servers changing it at once never lose each other's changes.
    fn update<T>(&self, change: impl FnOnce(&mut State) -> Result<T, RegistryError>) -> Result<T, RegistryError> {
        let io = |source| RegistryError::Io { path: self.path.clone(), source };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let lock_path = self.path.with_extension("json.lock");
        let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io)?;
        lock.lock().map_err(io)?;
        let mut next = load(&self.path)?.state;
        let out = change(&mut next)?;
        save(&self.path, &next)?;
        *self.loaded.write() = Loaded::new(next, file_version(&self.path));
        drop(lock);
        Ok(out)
    }
}

/// New keys: `mp_live_<id>_<secret><checksum>`. The prefix lets secret scanners find leaked
/// keys; the checksum (CRC-32 of the rest, in base62) lets the server refuse a mistyped key
/// without a lookup.
pub const KEY_PREFIX: &str = "mp_live_";
const SECRET_LEN: usize = 32;
const CHECKSUM_LEN: usize = 6;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn key_with_checksum(body: &str) -> String {
    format!("{body}{}", checksum(body))
}

fn checksum(body: &str) -> String {
    let mut n = crc32fast::hash(body.as_bytes()) as u64;
    let mut out = [0u8; CHECKSUM_LEN];
    for c in out.iter_mut().rev() {
        *c = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `len` random characters of a-z, A-Z, 0-9.
fn random_alphanumeric(len: usize) -> String {
    use rand::Rng;
    rand::rng().sample_iter(&rand::distr::Alphanumeric).take(len).map(char::from).collect()
}

/// The id part of a key: of a new key once its checksum matches, or of a key made before
/// checksums (`mp_<id>_<secret>`).
fn key_id(key: &str) -> Result<&str, AuthError> {
    if let Some(rest) = key.strip_prefix(KEY_PREFIX) {
        let (id, tail) = rest.split_once('_').ok_or(AuthError::Malformed)?;
        if tail.len() != SECRET_LEN + CHECKSUM_LEN || !tail.is_ascii() {
            return Err(AuthError::Malformed);
        }
        let (body, check) = key.split_at(key.len() - CHECKSUM_LEN);
        if checksum(body) != check {
            return Err(AuthError::Malformed);
        }
        return Ok(id);
    }
    let id = key.strip_prefix("mp_").and_then(|rest| rest.split('_').next()).ok_or(AuthError::Malformed)?;
    if id.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(id)
}

fn find_tenant<'a>(state: &'a mut State, tenant: &str) -> Result<&'a mut Tenant, RegistryError> {
    state.tenants.iter_mut().find(|t| t.id == tenant).ok_or_else(|| RegistryError::UnknownTenant(tenant.into()))
}

fn file_version(path: &Path) -> Option<FileVersion> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn load(path: &Path) -> Result<Loaded, RegistryError> {
    let version = file_version(path);
    match std::fs::read(path) {
        Ok(bytes) => {
            let state = serde_json::from_slice(&bytes)
                .map_err(|source| RegistryError::Corrupt { path: path.to_path_buf(), source })?;
            Ok(Loaded::new(state, version))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Loaded::new(State::default(), None)),
        Err(source) => Err(RegistryError::Io { path: path.to_path_buf(), source }),
    }
}

/// Writes the whole file to a temporary file of its own next to the old one (mode 0600),
/// syncs it and renames it over: a crash leaves either the old registry or the new one,
/// never half of one.
fn save(path: &Path, state: &State) -> Result<(), RegistryError> {
    let io = |source| RegistryError::Io { path: path.to_path_buf(), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".registry").suffix(".tmp").tempfile_in(dir).map_err(io)?;
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| io(std::io::Error::other(e)))?;
    tmp.write_all(&bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(tenant: &str) -> Claims {
        Claims {
            kind: Kind::Click,
            key_id: String::new(),
            tenant: tenant.into(),
            campaign: "c".into(),
            variant: String::new(),
            message_id: "m".into(),
            recipient: "r@x.test".into(),
            link: "https://x.test/".into(),
        }
    }

    #[test]
    fn links_of_tenants_and_keys_made_by_another_process_verify() {
        let dir = tempfile::tempdir().unwrap();
        let edge = Registry::open(dir.path().join("registry.json")).unwrap();
        edge.create_tenant("a").unwrap();
        let token = edge.mint(claims("a")).unwrap();
        // `mailpipe tenants create` / `rotate-key` run elsewhere, on the same file.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let tool = Registry::open(edge.path()).unwrap();
        tool.create_tenant("late").unwrap();
        tool.rotate_signing_key("a").unwrap();
        let late = tool.mint(claims("late")).unwrap();
        let rotated = tool.mint(claims("a")).unwrap();
        assert_eq!(edge.verify(&late, Kind::Click).unwrap().tenant, "late");
        assert_eq!(edge.verify(&rotated, Kind::Click).unwrap().tenant, "a");
        assert!(edge.verify(&token, Kind::Click).is_ok(), "links signed with the old key keep working");
    }

    #[test]
    fn api_keys_authenticate_only_their_tenant_and_are_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path().join("registry.json")).unwrap();
        reg.create_tenant("a").unwrap();
        reg.create_tenant("b").unwrap();
        let key = reg.create_api_key(NewKey::new("a", &[Scope::StatsRead])).unwrap();
        assert!(key.starts_with(KEY_PREFIX), "{key}");
        let p = reg.authenticate(&key).unwrap();
        assert_eq!((p.tenant.as_str(), p.scopes.as_slice(), p.tier), ("a", &[Scope::StatsRead][..], Tier::Starter));
        assert!(p.allows(Scope::StatsRead) && !p.allows(Scope::EventsWrite));
        assert_eq!(reg.authenticate(&format!("{key}x")), Err(AuthError::Malformed));
        assert_eq!(reg.authenticate("mp_nothing_here"), Err(AuthError::Unknown));
        assert_eq!(reg.authenticate("hello"), Err(AuthError::Malformed));
        let file = std::fs::read_to_string(reg.path()).unwrap();
        assert!(!file.contains(&key[KEY_PREFIX.len() + 13..]), "plaintext secret written to disk");
        // A second process sees keys created by the first, opened before or after.
        let other = Registry::open(reg.path()).unwrap();
        assert!(other.authenticate(&key).is_ok());
        let late = reg.create_api_key(NewKey::new("b", &[Scope::EventsWrite])).unwrap();
        assert_eq!(other.authenticate(&late).unwrap().tenant, "b", "a key made by another process right now");
    }

    #[test]
    fn a_mistyped_key_fails_its_checksum_and_a_right_checksum_with_a_wrong_secret_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path().join("registry.json")).unwrap();
        reg.create_tenant("a").unwrap();
        let key = reg.create_api_key(NewKey::new("a", &[Scope::Admin])).unwrap();
        // Every single-character typo in the secret is caught by the checksum.
        let secret_at = KEY_PREFIX.len() + 13;
        for i in secret_at..key.len() {
            let mut typo = key.clone().into_bytes();
            typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
            assert_eq!(reg.authenticate(std::str::from_utf8(&typo).unwrap()), Err(AuthError::Malformed), "typo at {i}");
        }
        // A well-formed key that was never issued.
        let forged = key_with_checksum(&key[..key.len() - CHECKSUM_LEN].replace(&key[secret_at..secret_at + 4], "zzzz"));
        assert_eq!(reg.authenticate(&forged), Err(AuthError::Unknown));
    }

    #[test]
    fn keys_are_listed_without_secrets_expire_and_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path().join("registry.json")).unwrap();
        reg.create_tenant("a").unwrap();
        reg.create_tenant("b").unwrap();
        let mut new = NewKey::new("a", &[Scope::EventsWrite, Scope::StatsRead]);
        new.name = "sending node 1".into();
        new.tier = Tier::Pro;
        let key = reg.create_api_key(new).unwrap();
        let mut expired = NewKey::new("a", &[Scope::StatsRead]);
        expired.expires_at = Some(Utc::now() - chrono::Duration::seconds(1));
        let expired = reg.create_api_key(expired).unwrap();
        reg.create_api_key(NewKey::new("b", &[Scope::Admin])).unwrap();
        assert_eq!(reg.authenticate(&expired), Err(AuthError::Expired));
        assert!(reg.authenticate(&key).is_ok());

        let listed = reg.list_api_keys(Some("a"));
        assert_eq!(listed.len(), 2);
        let info = listed.iter().find(|k| k.name == "sending node 1").unwrap();
        assert_eq!((info.tier, info.scopes.as_slice()), (Tier::Pro, &[Scope::EventsWrite, Scope::StatsRead][..]));
        assert!(info.created_at.is_some() && info.last_used_at.is_some(), "{info:?}");
        assert!(!serde_json::to_string(&listed).unwrap().contains(&key[KEY_PREFIX.len() + 13..]));
        assert_eq!(reg.list_api_keys(None).len(), 3);

        // Last use reaches the file, for `keys list` in another process.
        reg.save_last_used().unwrap();
        let tool = Registry::open(reg.path()).unwrap();
        assert!(tool.list_api_keys(Some("a")).iter().all(|k| k.id != info.id || k.last_used_at.is_some()));

        // Revoked by another process: refused here within RELOAD_EVERY.
        tool.revoke_api_key(&info.id).unwrap();
        assert!(matches!(tool.revoke_api_key(&info.id), Err(RegistryError::UnknownApiKey(_))));
        std::thread::sleep(RELOAD_EVERY + Duration::from_millis(50));
        assert_eq!(reg.authenticate(&key), Err(AuthError::Unknown));
    }

    #[test]
    fn keys_of_a_registry_written_by_the_release_before_scopes_still_authenticate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/registry-v0.json"), &path).unwrap();
        let keys = include_str!("../tests/fixtures/registry-v0.keys");
        let reg = Registry::open(&path).unwrap();
        for line in keys.lines() {
            let (legacy, key) = line.split_once(' ').unwrap();
            let p = reg.authenticate(key).unwrap_or_else(|e| panic!("{legacy} key refused: {e}"));
            assert_eq!(p.tenant, "legacy");
            assert_eq!(p.tier, Tier::Enterprise, "keys from before tiers are not suddenly limited");
            let expected: &[Scope] = match legacy {
                "read" => &[Scope::StatsRead, Scope::SuppressionsRead, Scope::ExportsRead],
                "write" => &[Scope::EventsWrite, Scope::InboundWrite, Scope::SuppressionsWrite],
                _ => &[Scope::Admin],
            };
            assert_eq!(p.scopes, expected, "{legacy}");
        }
        // A change rewrites the file in the new form; the old keys keep working.
        reg.create_tenant("new").unwrap();
        let again = Registry::open(&path).unwrap();
        for line in keys.lines() {
            assert!(again.authenticate(line.split_once(' ').unwrap().1).is_ok());
        }
        assert!(!std::fs::read_to_string(&path).unwrap().contains("\"scope\""));
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        Registry::open(&path).unwrap().create_tenant("a").unwrap();
        let keys: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..20)
                .map(|_| s.spawn(|| Registry::open(&path).unwrap().create_api_key(NewKey::new("a", &[Scope::StatsRead])).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let reg = Registry::open(&path).unwrap();
        assert_eq!(reg.list_api_keys(Some("a")).len(), 20);
        for key in &keys {
            assert!(reg.authenticate(key).is_ok());
        }
    }

    #[test]
    fn a_revoked_signing_key_stops_verifying_in_every_process() {
        let dir = tempfile::tempdir().unwrap();
        let server = Registry::open(dir.path().join("registry.json")).unwrap();
        server.create_tenant("a").unwrap();
        let old = server.mint(claims("a")).unwrap();
        assert!(server.verify(&old, Kind::Click).is_ok());
        // Another process (`mailpipe tenants revoke-key a k1`) revokes the key that signs.
        let tool = Registry::open(dir.path().join("registry.json")).unwrap();
        assert_eq!(tool.revoke_signing_key("a", "k1").unwrap(), "k2", "a fresh key signs from now on");
        assert!(tool.verify(&old, Kind::Click).is_err());
        std::thread::sleep(RELOAD_EVERY + Duration::from_millis(50));
        assert_eq!(server.verify(&old, Kind::Click), Err(TokenError::UnknownKey), "the running process sees it");
        let new = server.mint(claims("a")).unwrap();
        assert_eq!(server.verify(&new, Kind::Click).unwrap().key_id, "k2");
        // A revoked id is never given to a new key.
        tool.revoke_signing_key("a", "k2").unwrap();
        assert_eq!(tool.rotate_signing_key("a").unwrap(), "k4");
        assert!(matches!(tool.revoke_signing_key("a", "k1"), Err(RegistryError::UnknownSigningKey { .. })));
    }

    #[test]
    fn rotated_keys_keep_old_tokens_valid_and_tenants_do_not_share_keys() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path().join("registry.json")).unwrap();
        reg.create_tenant("a").unwrap();
        reg.create_tenant("b").unwrap();
        let old = reg.mint(claims("a")).unwrap();
        assert_eq!(reg.rotate_signing_key("a").unwrap(), "k2");
        let new = reg.mint(claims("a")).unwrap();
        assert_eq!(reg.verify(&old, Kind::Click).unwrap().key_id, "k1");
        assert_eq!(reg.verify(&new, Kind::Click).unwrap().key_id, "k2");
        // A token claiming tenant b but signed with a's key does not verify.
        let (_, a_key) = reg.active_signing_key("a").unwrap();
        let mut forged = claims("b");
        forged.key_id = "k1".into();
        let forged = mailpipe_tokens::mint(&forged, &a_key).unwrap();
        assert!(reg.verify(&forged, Kind::Click).is_err());
    }

    #[test]
    fn bad_tenant_ids_and_scopes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path().join("registry.json")).unwrap();
        assert!(matches!(reg.create_tenant("Bad Id"), Err(RegistryError::InvalidTenantId(_))));
        assert!(matches!(reg.create_api_key(NewKey::new("ghost", &[Scope::StatsRead])), Err(RegistryError::UnknownTenant(_))));
        assert!(matches!(reg.create_api_key(NewKey::new("ghost", &[])), Err(RegistryError::NoScope)));
        assert!(matches!(Scope::parse("root"), Err(RegistryError::InvalidScope(_))));
        assert!(matches!(Tier::parse("gold"), Err(RegistryError::InvalidTier(_))));
        assert_eq!(Scope::parse_list("stats:read, read").unwrap(), vec![Scope::StatsRead, Scope::SuppressionsRead, Scope::ExportsRead]);
        assert!(matches!(Scope::parse_list(" , "), Err(RegistryError::NoScope)));
        for scope in Scope::ALL {
            assert_eq!(serde_json::to_value(scope).unwrap(), scope.as_str());
        }
    }
}
