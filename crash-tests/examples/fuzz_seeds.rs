//! Write small valid heap images as fuzzing seeds: `fuzz_seeds DIR`. A fresh heap, and copies of
//! a live heap with committed frames still in its log (what a crash leaves), all 80 KiB.
use txheap::{Heap, Options};
fn main() {
    let out = std::path::PathBuf::from(std::env::args().nth(1).expect("output dir"));
    std::fs::create_dir_all(&out).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.heap");
    let opts = Options::new()
        .initial_size(0)
        .log_size(64 << 10)
        .max_size(1 << 30);
    let heap = Heap::create(&p, opts).unwrap();
    std::fs::copy(&p, out.join("fresh.img")).unwrap();
    for i in 0..3u64 {
        heap.transaction(|tx| {
            let r = tx.root::<[u64; 8]>()?;
            tx.get_mut(r)?[i as usize] = i + 1;
            Ok(())
        })
        .unwrap();
        std::fs::copy(&p, out.join(format!("frames-{i}.img"))).unwrap();
    }
    drop(heap);
    std::fs::copy(&p, out.join("closed.img")).unwrap();
    for e in std::fs::read_dir(&out).unwrap() {
        let e = e.unwrap();
        println!("{} {}", e.path().display(), e.metadata().unwrap().len());
    }
}
