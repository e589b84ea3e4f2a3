//! Fuzz open and recovery on *checksum-valid* hostile files: the input picks a valid seed image
//! and a list of structured mutations (superblock slots, log frames and ranges, heap header,
//! chunk-table entries, run bitmaps, file length), after which every checksum is recomputed, so the file gets
//! past the checks that refuse nearly every input of `open_recover`. See `fuzz/sealed.rs` for the
//! input format and the checks (no panic; a refused file unchanged; an opened heap usable).
//! Run: `cargo +nightly fuzz run open_recover_sealed fuzz/corpus-sealed -- -max_len=1025`
//! (crash-tests/README.md section 4).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../sealed.rs"]
mod sealed;

fuzz_target!(|data: &[u8]| {
    let dir =
        std::path::Path::new("/dev/shm").join(format!("txheap-fuzz-sealed-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    thread_local!(static IMAGE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) });
    IMAGE.with_borrow_mut(|image| {
        sealed::build_into(data, image);
        sealed::check(&dir.join("image.heap"), image);
    });
});
