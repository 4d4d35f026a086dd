//! What every server-backed engine (MySQL, Redis) resolves the same way:
//! the URL (configured, else from the environment) and the namespace of
//! the store's data on the server (configured, else derived from the
//! store's id, created with the store's first shard there).

use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Connect, Database, DbEngine};
use crate::config::ServerConfig;
use crate::engine::Engine;
use crate::{Error, Result};

/// Opens a server engine's database with its settings resolved (the key
/// prefix included) and whether the store is read-only.
type Open<D> = Box<dyn Fn(&ServerConfig, bool) -> Result<D> + Send + Sync>;

/// How a server engine reaches its database: the settings with the URL
/// resolved, the store directory (for the store's id) and how to open.
struct ServerConnect<D> {
    server: ServerConfig,
    dir: PathBuf,
    read_only: bool,
    /// Ends the derived key prefix's parts: `_` in table names, `:` in keys.
    separator: char,
    open: Open<D>,
}

impl<D: Database> Connect for ServerConnect<D> {
    type Db = D;

    /// With a server and a key prefix known, shards may be there: asking
    /// the server is the only way to know.
    fn may_exist(&self) -> bool {
        may_exist(&self.dir, &self.server)
    }

    fn open(&self) -> Result<Arc<D>> {
        let mut config = self.server.clone();
        config.key_prefix = key_prefix(&self.dir, &config, self.separator, self.read_only)?;
        (self.open)(&config, self.read_only).map(Arc::new)
    }
}

/// The engine of the store in `dir` on the server `config` names (else
/// `url_env` does); `open` connects once a shard needs the server.
pub fn engine<D: Database>(
    dir: &Path,
    config: &ServerConfig,
    url_env: &str,
    separator: char,
    read_only: bool,
    open: impl Fn(&ServerConfig, bool) -> Result<D> + Send + Sync + 'static,
) -> Arc<dyn Engine> {
    Arc::new(DbEngine::new(ServerConnect {
        server: with_env_url(config, url_env),
        dir: dir.to_path_buf(),
        read_only,
        separator,
        open: Box::new(open),
    }))
}

/// The file in the store directory holding the store's id.
pub const STORE_ID_FILE: &str = "store.id";

/// `config` with its URL from `url_env` when the configuration names none.
pub fn with_env_url(config: &ServerConfig, url_env: &str) -> ServerConfig {
    let mut resolved = config.clone();
    if resolved.url.is_none() {
        resolved.url = std::env::var(url_env).ok().filter(|url| !url.is_empty());
    }
    resolved
}

/// Whether the store may hold data on the server: a URL is known, and a
/// key prefix is configured or the store has an id already (an id is
/// written when the first shard is created there).
pub fn may_exist(dir: &Path, config: &ServerConfig) -> bool {
    config.url.is_some() && (!config.key_prefix.is_empty() || dir.join(STORE_ID_FILE).exists())
}

/// The key prefix of the store's data on the server: the configured one,
/// else `mqs<sep><store id><sep>` (see `store_id`).
pub fn key_prefix(dir: &Path, config: &ServerConfig, sep: char, read_only: bool) -> Result<String> {
    if !config.key_prefix.is_empty() {
        return Ok(config.key_prefix.clone());
    }
    Ok(format!("mqs{sep}{}{sep}", store_id(dir, read_only)?))
}

/// The store's id: 12 random hex digits, written to `store.id` in its
/// directory the first time a server engine needs it, so that stores
/// sharing a server (and a store moved to another directory) keep their
/// own data. A read-only open that finds none writes none: it has nothing
/// on any server to find.
pub fn store_id(dir: &Path, read_only: bool) -> Result<String> {
    let path = dir.join(STORE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            let valid = id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit());
            if !valid {
                return Err(Error::corruption(format!(
                    "'{}' does not hold a store id (12 hex digits)",
                    path.display()
                )));
            }
            Ok(id.to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = new_id();
            if !read_only {
                write_durably(dir, &path, &id)?;
            }
            Ok(id)
        }
        Err(e) => Err(Error::io(format!("reading '{}'", path.display()), e)),
    }
}

/// 48 random bits: std's hasher keys are seeded from the OS's randomness.
fn new_id() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:012x}", hasher.finish() >> 16)
}

/// Writes the id through a temporary file, renamed and synced with its
/// directory: a crash leaves the old state or the whole id.
fn write_durably(dir: &Path, path: &Path, id: &str) -> Result<()> {
    let temp = dir.join(format!("{STORE_ID_FILE}.tmp"));
    let io = |e| Error::io(format!("writing '{}'", path.display()), e);
    let mut file = std::fs::File::create(&temp).map_err(io)?;
    file.write_all(format!("{id}\n").as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temp, path).map_err(io)?;
    crate::io::sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_keeps_its_id_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ro = store_id(dir.path(), true).unwrap();
        assert!(
            !dir.path().join(STORE_ID_FILE).exists(),
            "read-only writes nothing"
        );
        let id = store_id(dir.path(), false).unwrap();
        assert_ne!(id, ro);
        assert_eq!(store_id(dir.path(), false).unwrap(), id);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(store_id(other.path(), false).unwrap(), id);
        let mut config = crate::config::Config::default().redis;
        assert_eq!(with_env_url(&config, "MQS_NO_SUCH_VAR").url, None);
        assert!(!may_exist(dir.path(), &config), "no url");
        config.url = Some("redis://127.0.0.1:1/".into());
        assert!(may_exist(dir.path(), &config));
        assert!(!may_exist(other.path().join("x").as_path(), &config));
        let prefix = key_prefix(dir.path(), &config, ':', false).unwrap();
        assert_eq!(prefix, format!("mqs:{id}:"));
        config.key_prefix = "mine:".into();
        assert_eq!(
            key_prefix(dir.path(), &config, ':', false).unwrap(),
            "mine:"
        );
        std::fs::write(dir.path().join(STORE_ID_FILE), "zz\n").unwrap();
        let err = store_id(dir.path(), false).unwrap_err();
        assert_eq!(err.status(), crate::Status::Corruption, "{err}");
    }
}
