//! W4: persistent maps. 8-byte keys with 64-byte values, N of them (1,000,000 in the full run):
//! `load` inserts them in random order in one durable transaction; `get` looks up N random keys
//! in one reader; `scan` reads every entry in key order (the hash map: in table order); `space`
//! is the store's file bytes per payload byte (72 per entry) after a load in transactions of
//! 1,000 with default options. Each store in its
//! own process; `get` and `scan` measure a store that a set-up child made (page cache warm).
//!
//! txheap runs twice: `PBTreeMap<u64, [u8; 64]>` (the subject) and `PHashMap<u64, [u8; 64]>`.
//! LMDB (heed, big-endian `u64` keys), redb (`u64` keys) and SQLite (`INTEGER PRIMARY KEY`)
//! hold the same pairs with their durable defaults.

use std::path::Path;
use std::time::Instant;

use heed::byteorder::BigEndian;
use heed::types::{Bytes, U64};
use heed::EnvFlags;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use txheap::{Heap, Options, PBTreeMap, PHashMap, PPtr};

use crate::args::ChildArgs;
use crate::engines::{expect_count, value_for};
use crate::sample::Sample;
use crate::BoxResult;

const FILE: &str = "w4.heap";
const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("kv");
/// LMDB's map: room for the entries several times over.
const LMDB_MAP: usize = 4 << 30;
/// Payload bytes per entry (key and value).
const ENTRY: u64 = 8 + 64;

type Tree = PBTreeMap<u64, [u8; 64]>;
type Hash = PHashMap<u64, [u8; 64]>;

/// The key of the `i`-th entry: a bijection of `u64`, so `0..N` gives N distinct keys spread
/// over the whole range (random insertion order for every ordered store).
pub fn key(i: u64) -> u64 {
    i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555
}

/// `n` indices in `0..size`, in a fixed pseudo-random order with repeats (xorshift).
fn probes(n: u64, size: u64) -> Vec<u64> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % size
        })
        .collect()
}

/// Which store a case runs.
#[derive(Clone, Copy)]
enum Kind {
    Tree,
    Hash,
    Lmdb,
    Redb,
    Sqlite,
}

fn kind(engine: &str) -> BoxResult<Kind> {
    Ok(match engine {
        "txheap" => Kind::Tree,
        "txheap-hash" => Kind::Hash,
        "lmdb" => Kind::Lmdb,
        "redb" => Kind::Redb,
        "sqlite" => Kind::Sqlite,
        e => return Err(format!("W4 has no engine {e}").into()),
    })
}

/// Inserts per transaction of W4-space's load (every store alike).
const SPACE_BATCH: u64 = 1_000;

fn heap_options(batch: u64) -> Options {
    if batch >= SPACE_BATCH * 10 {
        // One transaction of the whole load (as W3): the log holds its metadata.
        Options::new().log_size(256 << 20)
    } else {
        Options::new()
    }
}

/// Run `body(first, count)` over `0..n` in batches of `batch`.
fn batches<E>(
    n: u64,
    batch: u64,
    mut body: impl FnMut(u64, u64) -> Result<(), E>,
) -> Result<(), E> {
    let mut first = 0;
    while first < n {
        let k = batch.min(n - first);
        body(first, k)?;
        first += k;
    }
    Ok(())
}

fn root_tree(heap: &Heap) -> BoxResult<PPtr<Tree>> {
    Ok(heap.transaction(|tx| tx.root::<Tree>())?)
}

fn root_hash(heap: &Heap) -> BoxResult<PPtr<Hash>> {
    Ok(heap.transaction(|tx| tx.root::<Hash>())?)
}

fn lmdb_open(dir: &Path) -> BoxResult<heed::Env> {
    crate::sys::lmdb_env(dir, LMDB_MAP, EnvFlags::empty())
}

fn lmdb_db(env: &heed::Env) -> BoxResult<heed::Database<'_, U64<BigEndian>, Bytes>> {
    crate::engines::lmdb::unnamed_db(env)
}

fn sqlite_open(dir: &Path) -> BoxResult<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(dir.join("w4.sqlite"))?;
    let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch("CREATE TABLE IF NOT EXISTS kv (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")?;
    Ok(conn)
}

/// Insert entries `0..n` in durable transactions of `batch`; returns the seconds it took (the
/// store is opened and created before the clock starts).
fn load(k: Kind, dir: &Path, n: u64, batch: u64) -> BoxResult<f64> {
    match k {
        Kind::Tree | Kind::Hash => {
            let heap = Heap::create(dir.join(FILE), heap_options(batch))?;
            let secs = match k {
                Kind::Tree => {
                    let m = root_tree(&heap)?;
                    let t = Instant::now();
                    batches(n, batch, |first, c| {
                        heap.transaction(|tx| {
                            for i in first..first + c {
                                m.insert(tx, &key(i), &value_for(key(i)))?;
                            }
                            Ok(())
                        })
                    })?;
                    let s = t.elapsed().as_secs_f64();
                    expect_count("txheap", heap.read(|r| m.len(r))?, n)?;
                    s
                }
                _ => {
                    let m = root_hash(&heap)?;
                    let t = Instant::now();
                    batches(n, batch, |first, c| {
                        heap.transaction(|tx| {
                            for i in first..first + c {
                                m.insert(tx, &key(i), &value_for(key(i)))?;
                            }
                            Ok(())
                        })
                    })?;
                    let s = t.elapsed().as_secs_f64();
                    expect_count("txheap-hash", heap.read(|r| m.len(r))?, n)?;
                    s
                }
            };
            heap.close()?;
            Ok(secs)
        }
        Kind::Lmdb => {
            let env = lmdb_open(dir)?;
            let db = lmdb_db(&env)?;
            let t = Instant::now();
            batches(n, batch, |first, c| -> BoxResult<()> {
                let mut w = env.write_txn()?;
                for i in first..first + c {
                    db.put(&mut w, &key(i), &value_for(key(i)))?;
                }
                w.commit()?;
                Ok(())
            })?;
            let s = t.elapsed().as_secs_f64();
            let r = env.read_txn()?;
            expect_count("lmdb", db.len(&r)?, n)?;
            Ok(s)
        }
        Kind::Redb => {
            let db = redb::Database::create(dir.join("w4.redb"))?;
            let w = db.begin_write()?;
            w.open_table(TABLE)?;
            w.commit()?;
            let t = Instant::now();
            batches(n, batch, |first, c| -> BoxResult<()> {
                let w = db.begin_write()?;
                {
                    let mut table = w.open_table(TABLE)?;
                    for i in first..first + c {
                        table.insert(key(i), value_for(key(i)).as_slice())?;
                    }
                }
                w.commit()?;
                Ok(())
            })?;
            let s = t.elapsed().as_secs_f64();
            expect_count("redb", db.begin_read()?.open_table(TABLE)?.len()?, n)?;
            Ok(s)
        }
        Kind::Sqlite => {
            let mut conn = sqlite_open(dir)?;
            let t = Instant::now();
            batches(n, batch, |first, c| -> BoxResult<()> {
                let tx = conn.transaction()?;
                {
                    let mut stmt = tx.prepare_cached("INSERT INTO kv (k, v) VALUES (?1, ?2)")?;
                    for i in first..first + c {
                        stmt.execute((key(i) as i64, value_for(key(i)).as_slice()))?;
                    }
                }
                tx.commit()?;
                Ok(())
            })?;
            let s = t.elapsed().as_secs_f64();
            let found: i64 = conn.query_row("SELECT count(*) FROM kv", [], |row| row.get(0))?;
            expect_count("sqlite", found as u64, n)?;
            Ok(s)
        }
    }
}

/// The store's files' total length in `dir`.
fn dir_bytes(dir: &Path) -> BoxResult<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let m = e?.metadata()?;
        if m.is_file() {
            total += m.len();
        }
    }
    Ok(total)
}

/// W4-load: time the load of `args.ops` entries.
pub fn measure_load(args: &ChildArgs<'_>) -> BoxResult<Sample> {
    let secs = load(kind(args.engine)?, args.dir, args.ops, args.ops)?;
    Ok(Sample::new(
        args.engine,
        args.workload.name(),
        args.ops,
        std::time::Duration::from_secs_f64(secs),
        None,
    ))
}

/// W4-space: load `args.ops` entries in transactions of [`SPACE_BATCH`] with each store's
/// default options (txheap: its default 16 MiB log), then report the files' bytes per payload
/// byte.
pub fn measure_space(args: &ChildArgs<'_>) -> BoxResult<Sample> {
    let secs = load(kind(args.engine)?, args.dir, args.ops, SPACE_BATCH)?;
    let mut s = Sample::new(
        args.engine,
        args.workload.name(),
        args.ops,
        std::time::Duration::from_secs_f64(secs),
        None,
    );
    s.bytes = args.ops * ENTRY;
    s.file_len = Some(dir_bytes(args.dir)?);
    Ok(s)
}

/// Where the set-up records how many entries it loaded.
const COUNT_FILE: &str = "w4.count";

/// Set-up of W4-get and W4-scan: the loaded store, left in `args.dir`.
pub fn setup(args: &ChildArgs<'_>) -> BoxResult<()> {
    load(kind(args.engine)?, args.dir, args.ops, args.ops)?;
    std::fs::write(args.dir.join(COUNT_FILE), args.ops.to_string())?;
    Ok(())
}

fn loaded(dir: &Path) -> BoxResult<u64> {
    let text = std::fs::read_to_string(dir.join(COUNT_FILE))
        .map_err(|e| format!("W4: no {COUNT_FILE} from the set-up child: {e}"))?;
    Ok(text.trim().parse()?)
}

/// Fold a value into a checksum (so no lookup can be skipped).
fn fold(sum: u64, v: &[u8]) -> u64 {
    sum.wrapping_add(u64::from_le_bytes(
        v[..8].try_into().expect("64-byte value"),
    ))
}

/// A key the set-up loaded, missing (built only then: `ok_or` built and dropped an `Error` on
/// every lookup, 10 to 15 instructions of txheap's rows that LMDB's `&str` did not pay).
#[cold]
fn missing() -> txheap::Error {
    txheap::Error::NoRoot
}

/// W4-get: `args.ops` random point lookups of present keys in one reader.
pub fn measure_get(args: &ChildArgs<'_>) -> BoxResult<Sample> {
    let n = args.ops;
    let idx = probes(n, loaded(args.dir)?);
    let want = idx.iter().fold(0u64, |s, &i| s.wrapping_add(key(i)));
    let (secs, sum) = match kind(args.engine)? {
        Kind::Tree => {
            let heap = Heap::open(args.dir.join(FILE), Options::new())?;
            let m = heap.read(|r| r.root::<Tree>())?;
            let t = Instant::now();
            let sum = heap.read(|r| {
                let mut sum = 0u64;
                for &i in &idx {
                    sum = fold(sum, m.get(r, &key(i))?.ok_or_else(missing)?);
                }
                Ok(sum)
            })?;
            (t.elapsed(), sum)
        }
        Kind::Hash => {
            let heap = Heap::open(args.dir.join(FILE), Options::new())?;
            let m = heap.read(|r| r.root::<Hash>())?;
            let t = Instant::now();
            let sum = heap.read(|r| {
                let mut sum = 0u64;
                for &i in &idx {
                    sum = fold(sum, m.get(r, &key(i))?.ok_or_else(missing)?);
                }
                Ok(sum)
            })?;
            (t.elapsed(), sum)
        }
        Kind::Lmdb => {
            let env = lmdb_open(args.dir)?;
            let db = lmdb_db(&env)?;
            let t = Instant::now();
            let r = env.read_txn()?;
            let mut sum = 0u64;
            for &i in &idx {
                sum = fold(sum, db.get(&r, &key(i))?.ok_or("lmdb: key missing")?);
            }
            drop(r);
            (t.elapsed(), sum)
        }
        Kind::Redb => {
            let db = redb::Database::open(args.dir.join("w4.redb"))?;
            let t = Instant::now();
            let r = db.begin_read()?;
            let table = r.open_table(TABLE)?;
            let mut sum = 0u64;
            for &i in &idx {
                sum = fold(sum, table.get(key(i))?.ok_or("redb: key missing")?.value());
            }
            (t.elapsed(), sum)
        }
        Kind::Sqlite => {
            let conn = sqlite_open(args.dir)?;
            let t = Instant::now();
            // One reader, as the other engines: one read transaction around every lookup
            // (without it each lookup was a transaction of its own, its lock and unlock and a
            // journal check: three system calls per lookup, found by review).
            conn.execute_batch("BEGIN")?;
            let mut stmt = conn.prepare_cached("SELECT v FROM kv WHERE k = ?1")?;
            let mut sum = 0u64;
            for &i in &idx {
                let v: Vec<u8> = stmt.query_row([key(i) as i64], |row| row.get(0))?;
                sum = fold(sum, &v);
            }
            drop(stmt);
            conn.execute_batch("COMMIT")?;
            (t.elapsed(), sum)
        }
    };
    if sum != want {
        return Err(format!("{}: lookups returned wrong values", args.engine).into());
    }
    Ok(Sample::new(
        args.engine,
        args.workload.name(),
        n,
        secs,
        None,
    ))
}

/// W4-scan: read every entry (in key order; the hash map in table order) in one reader; the
/// operations reported are the entries the set-up loaded.
pub fn measure_scan(args: &ChildArgs<'_>) -> BoxResult<Sample> {
    let n = loaded(args.dir)?;
    let want = (0..n).fold(0u64, |s, i| s.wrapping_add(key(i)));
    let (secs, count, sum) = match kind(args.engine)? {
        Kind::Tree => {
            let heap = Heap::open(args.dir.join(FILE), Options::new())?;
            let m = heap.read(|r| r.root::<Tree>())?;
            let t = Instant::now();
            let (c, s) = heap.read(|r| {
                let (mut c, mut s, mut last) = (0u64, 0u64, None);
                for e in m.range(r, ..)? {
                    let (k, v) = e?;
                    if last.is_some_and(|l| l >= *k) {
                        return Err(txheap::Error::NoRoot);
                    }
                    last = Some(*k);
                    c += 1;
                    s = fold(s, v);
                }
                Ok((c, s))
            })?;
            (t.elapsed(), c, s)
        }
        Kind::Hash => {
            let heap = Heap::open(args.dir.join(FILE), Options::new())?;
            let m = heap.read(|r| r.root::<Hash>())?;
            let t = Instant::now();
            let (c, s) = heap.read(|r| {
                let (mut c, mut s) = (0u64, 0u64);
                for e in m.iter(r)? {
                    c += 1;
                    s = fold(s, e?.1);
                }
                Ok((c, s))
            })?;
            (t.elapsed(), c, s)
        }
        Kind::Lmdb => {
            let env = lmdb_open(args.dir)?;
            let db = lmdb_db(&env)?;
            let t = Instant::now();
            let r = env.read_txn()?;
            let (mut c, mut s) = (0u64, 0u64);
            for e in db.iter(&r)? {
                let (_, v) = e?;
                c += 1;
                s = fold(s, v);
            }
            drop(r);
            (t.elapsed(), c, s)
        }
        Kind::Redb => {
            let db = redb::Database::open(args.dir.join("w4.redb"))?;
            let t = Instant::now();
            let r = db.begin_read()?;
            let table = r.open_table(TABLE)?;
            let (mut c, mut s) = (0u64, 0u64);
            for e in table.iter()? {
                let (_, v) = e?;
                c += 1;
                s = fold(s, v.value());
            }
            (t.elapsed(), c, s)
        }
        Kind::Sqlite => {
            let conn = sqlite_open(args.dir)?;
            let t = Instant::now();
            let mut stmt = conn.prepare("SELECT v FROM kv ORDER BY k")?;
            let mut rows = stmt.query([])?;
            let (mut c, mut s) = (0u64, 0u64);
            while let Some(row) = rows.next()? {
                let v: Vec<u8> = row.get(0)?;
                c += 1;
                s = fold(s, &v);
            }
            (t.elapsed(), c, s)
        }
    };
    if count != n || sum != want {
        return Err(format!(
            "{}: scan saw {count} entries (of {n}) or wrong values",
            args.engine
        )
        .into());
    }
    Ok(Sample::new(
        args.engine,
        args.workload.name(),
        n,
        secs,
        None,
    ))
}
