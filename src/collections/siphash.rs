//! SipHash-1-3 with a 128-bit key: the hash maps' keyed hash, so that a hostile key set cannot
//! force collisions without knowing the map's seed (stored in the map's header, drawn from the
//! operating system's randomness when the map is first used).

use std::hash::Hasher;

/// A SipHash-1-3 hasher (one compression round per 8-byte word, three finalisation rounds).
pub(crate) struct SipHasher13 {
    v: [u64; 4],
    /// Bytes not yet compressed (fewer than 8), low bytes first.
    tail: u64,
    ntail: usize,
    length: u64,
}

impl SipHasher13 {
    pub(crate) fn new(k0: u64, k1: u64) -> SipHasher13 {
        SipHasher13 {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
            tail: 0,
            ntail: 0,
            length: 0,
        }
    }

    #[inline]
    fn round(&mut self) {
        let v = &mut self.v;
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13);
        v[1] ^= v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16);
        v[3] ^= v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21);
        v[3] ^= v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17);
        v[1] ^= v[2];
        v[2] = v[2].rotate_left(32);
    }

    #[inline]
    fn compress(&mut self, m: u64) {
        self.v[3] ^= m;
        self.round();
        self.v[0] ^= m;
    }
}

impl Hasher for SipHasher13 {
    fn write(&mut self, bytes: &[u8]) {
        self.length += bytes.len() as u64;
        let mut b = bytes;
        if self.ntail > 0 {
            let take = (8 - self.ntail).min(b.len());
            for (j, &x) in b[..take].iter().enumerate() {
                self.tail |= (x as u64) << (8 * (self.ntail + j));
            }
            self.ntail += take;
            b = &b[take..];
            if self.ntail < 8 {
                return;
            }
            let m = self.tail;
            self.compress(m);
            self.tail = 0;
            self.ntail = 0;
        }
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            self.compress(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        for (j, &x) in chunks.remainder().iter().enumerate() {
            self.tail |= (x as u64) << (8 * j);
        }
        self.ntail = chunks.remainder().len();
    }

    fn finish(&self) -> u64 {
        let mut s = SipHasher13 {
            v: self.v,
            tail: 0,
            ntail: 0,
            length: 0,
        };
        let m = ((self.length & 0xff) << 56) | self.tail;
        s.compress(m);
        s.v[2] ^= 0xff;
        s.round();
        s.round();
        s.round();
        s.v[0] ^ s.v[1] ^ s.v[2] ^ s.v[3]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Split writes agree with whole ones, and the key changes the hash.
    #[test]
    fn split_writes_agree_and_keys_matter() {
        let data: Vec<u8> = (0..64u8).collect();
        for len in 0..64 {
            let mut a = SipHasher13::new(1, 2);
            a.write(&data[..len]);
            for cut in 0..=len {
                let mut b = SipHasher13::new(1, 2);
                b.write(&data[..cut]);
                b.write(&data[cut..len]);
                assert_eq!(a.finish(), b.finish(), "len {len} cut {cut}");
            }
            let mut c = SipHasher13::new(1, 3);
            c.write(&data[..len]);
            assert_ne!(a.finish(), c.finish());
        }
    }

    /// Rust's `DefaultHasher::new()` is SipHash-1-3 with a zero key (unchanged since Rust 1.13;
    /// should std ever change it, this comparison, not the map, is what breaks).
    #[test]
    fn matches_std_sip13_with_zero_key() {
        let data: Vec<u8> = (0..40u8).collect();
        for len in 0..40 {
            let mut ours = SipHasher13::new(0, 0);
            ours.write(&data[..len]);
            let mut std_h = std::hash::DefaultHasher::new();
            std_h.write(&data[..len]);
            assert_eq!(ours.finish(), std_h.finish(), "len {len}");
        }
    }
}
