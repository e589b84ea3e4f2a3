//! SQLite (bundled, through rusqlite) in WAL mode: `kv(k INTEGER PRIMARY KEY, v BLOB)`, one
//! transaction per insert batch with a cached prepared statement. Durable: `synchronous=FULL`
//! (in WAL mode, NORMAL may lose the newest commits at power loss). Fast: `synchronous=OFF`.

use std::path::Path;

use rusqlite::Connection;

use super::{expect_count, in_order, value_for, Engine, Keys};
use crate::BoxResult;

struct Sqlite {
    conn: Connection,
    keys: Keys,
}

impl Engine for Sqlite {
    fn insert(&mut self, first: u64, n: u64) -> BoxResult<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached("INSERT INTO kv (k, v) VALUES (?1, ?2)")?;
            for i in first..first + n {
                let key = (self.keys)(i);
                stmt.execute((key as i64, value_for(key).as_slice()))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn check(&mut self, count: u64) -> BoxResult<()> {
        let found: i64 = self
            .conn
            .query_row("SELECT count(*) FROM kv", [], |row| row.get(0))?;
        expect_count("sqlite", found as u64, count)
    }
}

fn with(
    dir: &Path,
    synchronous: &str,
    keys: Keys,
    body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>,
) -> BoxResult<()> {
    let conn = Connection::open(dir.join("bench.sqlite"))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("sqlite: journal_mode=WAL gave {mode}").into());
    }
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.execute_batch("CREATE TABLE kv (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")?;
    let mut e = Sqlite { conn, keys };
    body(&mut e)?;
    Ok(())
}

/// WAL mode, `synchronous=FULL`: durable at commit.
pub fn full(dir: &Path, body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>) -> BoxResult<()> {
    with(dir, "FULL", in_order, body)
}

/// WAL mode, `synchronous=OFF`.
pub fn off(dir: &Path, body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>) -> BoxResult<()> {
    with(dir, "OFF", in_order, body)
}

/// [`full`] inserting W4's random keys (`w4::key`).
pub fn full_random_keys(
    dir: &Path,
    body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>,
) -> BoxResult<()> {
    with(dir, "FULL", crate::w4::key, body)
}

/// [`off`] inserting W4's random keys (`w4::key`).
pub fn off_random_keys(
    dir: &Path,
    body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>,
) -> BoxResult<()> {
    with(dir, "OFF", crate::w4::key, body)
}
