//! redb: a table of `u64` keys to 64-byte values, one write transaction per insert batch.
//! Durable: `Durability::Immediate` (redb's default). Fast: `Durability::None`.

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTableMetadata, TableDefinition};

use super::{expect_count, in_order, value_for, Engine, Keys};
use crate::BoxResult;

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("kv");

struct Redb {
    db: Database,
    durability: Durability,
    keys: Keys,
}

impl Engine for Redb {
    fn insert(&mut self, first: u64, n: u64) -> BoxResult<()> {
        let mut wtxn = self.db.begin_write()?;
        wtxn.set_durability(self.durability)?;
        {
            let mut table = wtxn.open_table(TABLE)?;
            for i in first..first + n {
                let key = (self.keys)(i);
                table.insert(key, value_for(key).as_slice())?;
            }
        }
        wtxn.commit()?;
        Ok(())
    }

    fn check(&mut self, count: u64) -> BoxResult<()> {
        let rtxn = self.db.begin_read()?;
        let table = rtxn.open_table(TABLE)?;
        expect_count("redb", table.len()?, count)
    }
}

fn with(
    dir: &Path,
    durability: Durability,
    keys: Keys,
    body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>,
) -> BoxResult<()> {
    let db = Database::create(dir.join("bench.redb"))?;
    // Create the table up front, durably, outside the timed region.
    let wtxn = db.begin_write()?;
    wtxn.open_table(TABLE)?;
    wtxn.commit()?;
    let mut e = Redb {
        db,
        durability,
        keys,
    };
    body(&mut e)?;
    // A final durable commit so the fast setting's work is persisted (not timed).
    let wtxn = e.db.begin_write()?;
    wtxn.commit()?;
    Ok(())
}

/// `Durability::Immediate`: durable when `commit` returns.
pub fn immediate(
    dir: &Path,
    body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>,
) -> BoxResult<()> {
    with(dir, Durability::Immediate, in_order, body)
}

/// `Durability::None`: not persisted until a later durable commit.
pub fn none(dir: &Path, body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>) -> BoxResult<()> {
    with(dir, Durability::None, in_order, body)
}

/// [`immediate`] inserting W4's random keys (`w4::key`).
pub fn immediate_random_keys(
    dir: &Path,
    body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>,
) -> BoxResult<()> {
    with(dir, Durability::Immediate, crate::w4::key, body)
}

/// [`none`] inserting W4's random keys (`w4::key`).
pub fn none_random_keys(
    dir: &Path,
    body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>,
) -> BoxResult<()> {
    with(dir, Durability::None, crate::w4::key, body)
}
