//! The state that transactions, the writer and readers share: the file, its mapping, the fixed
//! geometry, the view lock, and poisoning.
//!
//! Owns: `Shared` and the committed `View` readers see. The view lock is held for reading by
//! every `read` closure and for writing only while the writer changes bytes readers could see
//! (apply, in-place writes, a flush of private pages). May not: sequence I/O (the writer does)
//! or know transactions.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use crate::alloc::HeapHeader;
use crate::error::{Error, Result};
use crate::layout::Geometry;
use crate::options::Durability;
use crate::sys::Mapping;

/// The committed state readers see.
#[derive(Debug)]
pub(crate) struct View {
    pub header: HeapHeader,
}

/// What every part of an open heap reads; changed only under the locks described above.
#[derive(Debug)]
pub(crate) struct Shared {
    pub path: PathBuf,
    /// Keeps the descriptor (and its `flock`) alive for as long as the mapping.
    pub file: Arc<File>,
    pub map: Mapping,
    pub geo: Geometry,
    pub read_only: bool,
    pub durability: Durability,
    pub view: RwLock<View>,
    poison: Mutex<Option<String>>,
    /// Transactions the open dropped on purpose (`Options::salvage`): first and last txid.
    pub salvaged: Option<(u64, u64)>,
    /// Superblock slots the open found damaged (it used the other one).
    pub superblock_damage: Option<String>,
    /// [`crate::Options::in_place_min`].
    pub in_place_min: u64,
}

impl Shared {
    pub(crate) fn new(
        path: PathBuf,
        file: Arc<File>,
        map: Mapping,
        geo: Geometry,
        read_only: bool,
        durability: Durability,
        header: HeapHeader,
    ) -> Shared {
        Shared {
            path,
            file,
            map,
            geo,
            read_only,
            durability,
            view: RwLock::new(View { header }),
            poison: Mutex::new(None),
            salvaged: None,
            superblock_damage: None,
            in_place_min: u64::MAX,
        }
    }

    /// Record the first failure; the handle refuses every later commit and read.
    pub(crate) fn poison(&self, cause: &str) {
        let mut p = self.poison.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none() {
            *p = Some(cause.to_string());
        }
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poison
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    pub(crate) fn check_poison(&self) -> Result<()> {
        match &*self.poison.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(cause) => Err(Error::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Turn an I/O failure in the commit or checkpoint path into a poisoned heap and an error.
    pub(crate) fn fail(&self, op: &'static str, offset: u64, e: io::Error) -> Error {
        self.poison(&format!("{op} at offset {offset}: {e}"));
        Error::io(op, offset, e)
    }
}
