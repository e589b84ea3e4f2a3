//! `txheap`: inspect and recover heap files.
//!
//! ```text
//! txheap info FILE      read-only: superblock, log, allocator figures (replays the log in memory only)
//! txheap recover FILE   open for writing (replays committed frames, checkpoints), then close
//! txheap recover --salvage FILE
//!                       the same, accepting the loss of the transactions after a damaged log
//!                       frame (which plain `recover` refuses, naming the damage)
//! ```
//! Exit status: 0 on success, 1 when the file is refused (the error names the problem), 2 on
//! usage errors.

use std::process::ExitCode;

use txheap::{Heap, Options};

fn info(path: &str) -> txheap::Result<()> {
    let heap = Heap::open_read_only(path)?;
    let s = heap.stats()?;
    println!("file            {path}");
    println!(
        "file length     {} bytes (max_size {})",
        s.file_len, s.max_size
    );
    println!(
        "filesystem      {}{}",
        s.filesystem,
        if s.volatile_storage {
            " (in memory only: nothing survives a power cut or reboot, whatever the durability)"
        } else {
            ""
        }
    );
    if let Some(damage) = &s.superblock_damage {
        println!("WARNING         damaged superblock ({damage}); the other slot was used");
    }
    println!(
        "superblock      seq {}, log generation {}, next txid {}",
        s.superblock_seq, s.log_generation, s.next_txid
    );
    println!(
        "log             {} of {} bytes hold committed frames not yet checkpointed",
        s.log_used, s.log_size
    );
    println!(
        "heap            {} bytes in chunks: {} used, {} free, largest free extent {}",
        s.heap_bytes, s.used_bytes, s.free_bytes, s.largest_free_extent
    );
    let classes: Vec<_> = s.classes.iter().filter(|c| c.runs > 0).collect();
    if !classes.is_empty() {
        println!("size classes    block  runs  used  free");
        for c in classes {
            println!(
                "                {:>5} {:>5} {:>5} {:>5}",
                c.block_size, c.runs, c.used_blocks, c.free_blocks
            );
        }
    }
    Ok(())
}

fn recover(path: &str, salvage: bool) -> txheap::Result<()> {
    let heap = Heap::open(path, Options::new().salvage(salvage))?;
    let s = heap.stats()?;
    heap.close()?;
    println!(
        "{path}: recovered; superblock seq {}, next txid {}",
        s.superblock_seq, s.next_txid
    );
    if let Some((first, last)) = s.salvaged {
        println!(
            "{path}: salvaged: a damaged log frame cut off transactions {first}..={last} ({} dropped)",
            last - first + 1
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["info", path] => info(path),
        ["recover", path] => recover(path, false),
        ["recover", "--salvage", path] => recover(path, true),
        _ => {
            eprintln!("usage: txheap info FILE | txheap recover [--salvage] FILE");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("txheap: {}: {e}", args[args.len() - 1]);
            ExitCode::from(1)
        }
    }
}
