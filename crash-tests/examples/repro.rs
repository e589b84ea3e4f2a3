//! Rebuild the crash images at event E and recover each extreme and single-sector variant:
//! `repro SEED full|none TXNS E`.
use crash_tests::{check_image, record, Disk};
use txheap::Durability;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let seed: u64 = a[1].parse().unwrap();
    let d = if a[2] == "none" {
        Durability::None
    } else {
        Durability::Full
    };
    let txns: u64 = a[3].parse().unwrap();
    let e: usize = a[4].parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rec = record(&dir.path().join("x.heap"), seed, d, txns);
    let mut disk = Disk::new(&rec.base);
    for ev in &rec.events[..=e] {
        disk.apply(ev);
    }
    let sectors: Vec<(u64, usize)> = disk.pending_sectors();
    println!("acked {}, undecided sectors {:?}", disk.acked, sectors);
    let p = dir.path().join("img.heap");
    for mask in 0u64..(1 << sectors.len().min(6)) {
        let img = disk.image(|s, v| {
            let i = sectors.iter().position(|x| x.0 == s).unwrap();
            if i < 6 && mask & (1 << i) != 0 {
                v
            } else {
                0
            }
        });
        let hdr = |o: usize| {
            String::from_utf8_lossy(&img[o..o + 4]).to_string()
                + &format!(
                    " n={}",
                    u32::from_le_bytes(img[o + 4..o + 8].try_into().unwrap())
                )
        };
        let sb = |o: usize| {
            format!(
                "seq {} gen {} next {}",
                u64::from_le_bytes(img[o + 16..o + 24].try_into().unwrap()),
                u64::from_le_bytes(img[o + 24..o + 32].try_into().unwrap()),
                u64::from_le_bytes(img[o + 32..o + 40].try_into().unwrap())
            )
        };
        println!(
            "mask {mask:b}: ch5 [{}] ch6 [{}] sbA [{}] sbB [{}] frame-hdr gen {} txid {}",
            hdr(1982464),
            hdr(2244608),
            sb(0),
            sb(4096),
            u64::from_le_bytes(img[8200..8208].try_into().unwrap()),
            u64::from_le_bytes(img[8208..8216].try_into().unwrap())
        );
        std::fs::write(format!("/tmp/img{mask}.bin"), &img[8192..9216]).unwrap();
        let st = txheap_recovery::MemStorage::from_bytes(img.clone());
        let (sb, slot) = txheap_recovery::select_superblock(&st).unwrap();
        let mut ranges = Vec::new();
        let scan = txheap_recovery::scan_log(&st, &sb, &mut |o, b| {
            ranges.push((o, b.len()));
            Ok(())
        });
        println!(
            "   sb {:?} {:?}; scan {:?}; ranges {:?}",
            slot,
            sb,
            scan.map(|s| (s.frames, s.end_offset, s.stop)),
            ranges
        );
        println!("   -> {:?}", check_image(&p, &img, &rec, disk.acked, false));
    }
}
