//! The tenant registry: each tenant's signing keys (for tracking tokens) and its API keys,
//! kept in one JSON file under the data directory. API keys are stored as SHA-256 hashes only.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use mailpipe_tokens::{Claims, Kind, TokenError};
use parking_lot::RwLock;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

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
    #[error("scope {0:?} is invalid: use read, write or admin")]
    InvalidScope(String),
    #[error("cannot make a token: {0}")]
    Token(#[from] TokenError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub fn parse(s: &str) -> Result<Scope, RegistryError> {
        match s {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            _ => Err(RegistryError::InvalidScope(s.to_string())),
        }
    }
    /// Whether a key of this scope may do what `needed` allows.
    pub fn allows(self, needed: Scope) -> bool {
        self == Scope::Admin || self == needed
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
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKey {
    id: String,
    tenant: String,
    scope: Scope,
    sha256: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    tenants: Vec<Tenant>,
    api_keys: Vec<ApiKey>,
}

/// Who an API key belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    pub scope: Scope,
}

/// Signing keys by tenant, then key id: looked up by `&str` on every tracking hit.
type KeyCache = std::collections::HashMap<String, std::collections::HashMap<String, Vec<u8>>>;

fn decode_keys(state: &State) -> KeyCache {
    let mut keys = KeyCache::new();
    for t in &state.tenants {
        for k in &t.signing_keys {
            if let Ok(bytes) = URL_SAFE_NO_PAD.decode(&k.secret) {
                keys.entry(t.id.clone()).or_default().insert(k.kid.clone(), bytes);
            }
        }
    }
    keys
}

pub struct Registry {
    path: PathBuf,
    /// The file's contents, its modification time, and the signing keys decoded once (the
    /// pixel path verifies a token per hit).
    state: RwLock<(State, Option<SystemTime>, KeyCache)>,
}

impl Registry {
    /// Opens the registry at `path`, empty if the file does not exist yet.
    pub fn open(path: impl Into<PathBuf>) -> Result<Registry, RegistryError> {
        let path = path.into();
        let loaded = load(&path)?;
        Ok(Registry { path, state: RwLock::new(loaded) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tenants(&self) -> Vec<String> {
        self.state.read().0.tenants.iter().map(|t| t.id.clone()).collect()
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
            state.tenants.push(Tenant {
                id: id.to_string(),
                signing_keys: vec![SigningKey { kid: "k1".into(), secret: URL_SAFE_NO_PAD.encode(random::<32>()) }],
            });
            Ok(())
        })
    }

    /// Adds a new signing key for `tenant`; tokens signed with the older ones stay valid.
    pub fn rotate_signing_key(&self, tenant: &str) -> Result<String, RegistryError> {
        self.update(|state| {
            let t = find_tenant(state, tenant)?;
            let kid = format!("k{}", t.signing_keys.len() + 1);
            t.signing_keys.push(SigningKey { kid: kid.clone(), secret: URL_SAFE_NO_PAD.encode(random::<32>()) });
            Ok(kid)
        })
    }

    /// The key that signs new tokens of `tenant`: (key id, key bytes).
    pub fn active_signing_key(&self, tenant: &str) -> Result<(String, Vec<u8>), RegistryError> {
        self.refresh_if_changed();
        let state = self.state.read();
        let t = state.0.tenants.iter().find(|t| t.id == tenant).ok_or_else(|| RegistryError::UnknownTenant(tenant.into()))?;
        let key = t.signing_keys.last().ok_or_else(|| RegistryError::UnknownTenant(tenant.into()))?;
        Ok((key.kid.clone(), URL_SAFE_NO_PAD.decode(&key.secret).unwrap_or_default()))
    }

    /// Mints a token with the tenant's active key.
    pub fn mint(&self, mut claims: Claims) -> Result<String, RegistryError> {
        let (kid, key) = self.active_signing_key(&claims.tenant)?;
        claims.key_id = kid;
        Ok(mailpipe_tokens::mint(&claims, &key)?)
    }

    /// Verifies a tracking token against the tenant's keys, in memory. A token naming a key
    /// this process does not know makes it look whether the file changed (a tenant created or
    /// a key rotated by another process) and try once more.
    pub fn verify(&self, token: &str, kind: Kind) -> Result<Claims, TokenError> {
        let attempt = |unknown_key: &std::cell::Cell<bool>| {
            let state = self.state.read();
            mailpipe_tokens::verify(token, kind, |tenant, kid| {
                let key = state.2.get(tenant).and_then(|keys| keys.get(kid)).map(Vec::as_slice);
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
    pub fn create_api_key(&self, tenant: &str, scope: Scope) -> Result<String, RegistryError> {
        let id = hex(&random::<6>());
        let key = format!("mp_{id}_{}", URL_SAFE_NO_PAD.encode(random::<24>()));
        let sha256 = hex(&Sha256::digest(key.as_bytes()));
        self.update(|state| {
            find_tenant(state, tenant)?;
            state.api_keys.push(ApiKey { id, tenant: tenant.to_string(), scope, sha256 });
            Ok(())
        })?;
        Ok(key)
    }

    /// The tenant and scope of an API key, or None for an unknown key. Keys created by
    /// another process (`mailpipe keys create`) are picked up when the file changes.
    pub fn authenticate(&self, key: &str) -> Option<Principal> {
        let id = key.strip_prefix("mp_")?.split('_').next()?;
        let hash = hex(&Sha256::digest(key.as_bytes()));
        let lookup = |state: &State| {
            state.api_keys.iter().find(|k| k.id == id && constant_time_eq(k.sha256.as_bytes(), hash.as_bytes())).map(
                |k| Principal { tenant: k.tenant.clone(), scope: k.scope },
            )
        };
        if let Some(p) = lookup(&self.state.read().0) {
            return Some(p);
        }
        self.refresh_if_changed();
        lookup(&self.state.read().0)
    }

    fn refresh_if_changed(&self) {
        let mtime = modified(&self.path);
        if mtime.is_some() && mtime != self.state.read().1 {
            if let Ok(loaded) = load(&self.path) {
                *self.state.write() = loaded;
            }
        }
    }

    fn update<T>(&self, change: impl FnOnce(&mut State) -> Result<T, RegistryError>) -> Result<T, RegistryError> {
        self.refresh_if_changed();
        let mut guard = self.state.write();
        let mut next = guard.0.clone();
        let out = change(&mut next)?;
        save(&self.path, &next)?;
        let keys = decode_keys(&next);
        *guard = (next, modified(&self.path), keys);
        Ok(out)
    }
}

fn find_tenant<'a>(state: &'a mut State, tenant: &str) -> Result<&'a mut Tenant, RegistryError> {
    state.tenants.iter_mut().find(|t| t.id == tenant).ok_or_else(|| RegistryError::UnknownTenant(tenant.into()))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load(path: &Path) -> Result<(State, Option<SystemTime>, KeyCache), RegistryError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let state = serde_json::from_slice(&bytes)
                .map_err(|source| RegistryError::Corrupt { path: path.to_path_buf(), source })?;
            let keys = decode_keys(&state);
            Ok((state, modified(path), keys))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((State::default(), None, KeyCache::new())),
        Err(source) => Err(RegistryError::Io { path: path.to_path_buf(), source }),
    }
}

/// Writes the whole file next to the old one, syncs it and renames it over: a crash leaves
/// either the old registry or the new one, never half of one.
fn save(path: &Path, state: &State) -> Result<(), RegistryError> {
    let io = |source| RegistryError::Io { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| io(std::io::Error::other(e)))?;
    file.write_all(&bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
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
        let key = reg.create_api_key("a", Scope::Read).unwrap();
        assert_eq!(reg.authenticate(&key), Some(Principal { tenant: "a".into(), scope: Scope::Read }));
        assert_eq!(reg.authenticate(&format!("{key}x")), None);
        assert_eq!(reg.authenticate("mp_nothing_here"), None);
        let file = std::fs::read_to_string(reg.path()).unwrap();
        assert!(!file.contains(&key), "plaintext key written to disk");
        // A second process sees keys created by the first.
        let other = Registry::open(reg.path()).unwrap();
        assert!(other.authenticate(&key).is_some());
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
        assert!(matches!(reg.create_api_key("ghost", Scope::Read), Err(RegistryError::UnknownTenant(_))));
        assert!(matches!(Scope::parse("root"), Err(RegistryError::InvalidScope(_))));
        assert!(Scope::Admin.allows(Scope::Write) && !Scope::Read.allows(Scope::Write));
    }
}
