//! `DbEngine`: the engine of every database backend. It opens the database
//! when a shard first needs it (or at open, when the store may hold
//! shards there), allocates shard ids and keeps the registry of live
//! shards.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::shard::{self, DbShard};
use super::Database;
use crate::config::{EngineKind, ShardOptions};
use crate::engine::{Engine, RecoveredShard, Shard};
use crate::{Error, Result};

/// How a backend's database is reached.
pub(crate) trait Connect: Send + Sync + 'static {
    type Db: Database;

    /// Whether the store may already hold shards in the database: `recover`
    /// opens it only then (a store that never used the engine needs no
    /// directory, and no server).
    fn may_exist(&self) -> bool;

    /// Opens (and creates) the database.
    fn open(&self) -> Result<Arc<Self::Db>>;
}

pub(crate) struct DbEngine<C: Connect> {
    connect: C,
    db: Mutex<Option<Arc<C::Db>>>,
    /// Set by `close` under the `db` lock: a shard creation racing the
    /// close must not open the database again.
    closed: AtomicBool,
    shards: Mutex<HashMap<String, Arc<DbShard<C::Db>>>>,
    /// Ids are never reused while the store is open; at open the next id
    /// is one past the largest stored.
    next_id: AtomicU64,
}

impl<C: Connect> DbEngine<C> {
    pub fn new(connect: C) -> DbEngine<C> {
        DbEngine {
            connect,
            db: Mutex::new(None),
            closed: AtomicBool::new(false),
            shards: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// The database, opened on first use.
    fn db(&self) -> Result<Arc<C::Db>> {
        let mut slot = self.db.lock();
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        let db = self.connect.open()?;
        *slot = Some(db.clone());
        Ok(db)
    }
}

impl<C: Connect> Engine for DbEngine<C> {
    fn kind(&self) -> EngineKind {
        C::Db::KIND
    }

    fn create_shard(&self, name: &str, options: &ShardOptions) -> Result<Arc<dyn Shard>> {
        let mut created = self.create_shards(&[name], options)?;
        Ok(created.pop().expect("one shard per name"))
    }

    fn create_shards(&self, names: &[&str], options: &ShardOptions) -> Result<Vec<Arc<dyn Shard>>> {
        let db = self.db()?;
        let first = self
            .next_id
            .fetch_add(names.len() as u64, Ordering::Relaxed);
        let created = DbShard::create_all(first.., names, options, &db)?;
        let mut registry = self.shards.lock();
        Ok(created
            .into_iter()
            .map(|shard| {
                let shard = Arc::new(shard);
                registry.insert(shard.name().to_string(), shard.clone());
                shard as Arc<dyn Shard>
            })
            .collect())
    }

    fn remove_shard(&self, name: &str, shard: &Arc<dyn Shard>) -> Result<()> {
        let ours = self.shards.lock().get(name).cloned();
        let Some(ours) = ours else {
            return Ok(());
        };
        // The registry may hold a newer shard of the same name by now.
        if Arc::as_ptr(shard) as *const () != Arc::as_ptr(&ours) as *const () {
            return Ok(());
        }
        ours.delete()?;
        let mut shards = self.shards.lock();
        if shards.get(name).is_some_and(|s| Arc::ptr_eq(s, &ours)) {
            shards.remove(name);
        }
        Ok(())
    }

    fn close(&self) -> Result<()> {
        let db = {
            let mut slot = self.db.lock();
            self.closed.store(true, Ordering::Release);
            slot.take()
        };
        self.shards.lock().clear();
        match db {
            Some(db) => db.close(),
            None => Ok(()),
        }
    }

    fn recover(&self) -> Result<Vec<RecoveredShard>> {
        if !self.connect.may_exist() {
            return Ok(Vec::new());
        }
        let db = self.db()?;
        let recovered = shard::recover_all(&db)?;
        let mut out: Vec<RecoveredShard> = Vec::new();
        let mut registry = self.shards.lock();
        for shard in recovered {
            self.next_id.fetch_max(shard.id() + 1, Ordering::Relaxed);
            let shard = Arc::new(shard);
            registry.insert(shard.name().to_string(), shard.clone());
            out.push((shard.name().to_string(), shard.options().clone(), shard));
        }
        Ok(out)
    }
}
