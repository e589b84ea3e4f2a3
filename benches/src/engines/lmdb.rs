//! LMDB through heed: a database of 8-byte big-endian keys to 64-byte values, one write
//! transaction per insert batch. Durable: LMDB's defaults (a sync at every commit). Fast:
//! `WRITE_MAP | NO_SYNC`, and plain `NO_SYNC`.

use std::path::Path;

use heed::byteorder::BigEndian;
use heed::types::{Bytes, U64};
use heed::{CommitOrAbort, Database, EnvFlags};

use super::{expect_count, in_order, value_for, Engine, Keys};
use crate::BoxResult;

/// Address space for the map: far more than 1,000,000 small items need.
const MAP_SIZE: usize = 4 << 30;

struct Lmdb<'e> {
    env: &'e heed::Env,
    db: Database<'e, U64<BigEndian>, Bytes>,
    keys: Keys,
}

impl Engine for Lmdb<'_> {
    fn insert(&mut self, first: u64, n: u64) -> BoxResult<()> {
        let mut wtxn = self.env.write_txn()?;
        for i in first..first + n {
            let key = (self.keys)(i);
            self.db.put(&mut wtxn, &key, &value_for(key))?;
        }
        wtxn.commit()?;
        Ok(())
    }

    fn check(&mut self, count: u64) -> BoxResult<()> {
        let rtxn = self.env.read_txn()?;
        let found = self.db.len(&rtxn)?;
        expect_count("lmdb", found, count)
    }
}

/// The environment's unnamed database (big-endian `u64` keys, byte values), created if new.
pub fn unnamed_db(env: &heed::Env) -> BoxResult<Database<'_, U64<BigEndian>, Bytes>> {
    let wtxn = env.write_txn()?;
    Ok(env
        .create_databases_and_commit(wtxn, |opener, wtxn| -> BoxResult<_> {
            let db = opener.create_database::<U64<BigEndian>, Bytes>(wtxn, None)?;
            Ok(CommitOrAbort::<_, ()>::Commit(db))
        })?
        .unwrap_commit())
}

fn with(
    dir: &Path,
    flags: EnvFlags,
    keys: Keys,
    body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>,
) -> BoxResult<()> {
    let env = crate::sys::lmdb_env(dir, MAP_SIZE, flags)?;
    let db = unnamed_db(&env)?;
    let mut e = Lmdb {
        env: &env,
        db,
        keys,
    };
    body(&mut e)?;
    // Make the fast settings' data durable before the directory is removed (not timed).
    env.force_sync()?;
    Ok(())
}

/// LMDB's defaults: every commit is synced.
pub fn durable(
    dir: &Path,
    body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>,
) -> BoxResult<()> {
    with(dir, EnvFlags::empty(), in_order, body)
}

/// `WRITE_MAP | NO_SYNC`: LMDB's fastest setting.
pub fn writemap_nosync(
    dir: &Path,
    body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>,
) -> BoxResult<()> {
    with(dir, EnvFlags::WRITE_MAP | EnvFlags::NO_SYNC, in_order, body)
}

/// `NO_SYNC` alone (pages written with `pwrite`, no sync).
pub fn nosync(dir: &Path, body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>) -> BoxResult<()> {
    with(dir, EnvFlags::NO_SYNC, in_order, body)
}

/// [`durable`] inserting W4's random keys (`w4::key`).
pub fn durable_random_keys(
    dir: &Path,
    body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>,
) -> BoxResult<()> {
    with(dir, EnvFlags::empty(), crate::w4::key, body)
}

/// [`writemap_nosync`] inserting W4's random keys (`w4::key`).
pub fn writemap_nosync_random_keys(
    dir: &Path,
    body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>,
) -> BoxResult<()> {
    with(
        dir,
        EnvFlags::WRITE_MAP | EnvFlags::NO_SYNC,
        crate::w4::key,
        body,
    )
}
