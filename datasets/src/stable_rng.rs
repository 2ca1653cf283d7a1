//! Seeded draws whose output for a seed is part of this crate's contract: bounded integers and shuffles on ChaCha8.
//!
//! `rand`'s own `gen_range`/`shuffle` may change between its releases; these are fixed:
//! - [`below`]`(rng, n)`: draw `v = next_u32()`, reject while `v ≥ 2³² − (2³² mod n)`,
//!   return `v mod n`;
//! - [`shuffle`]: Fisher–Yates from the end, `for i in (1..len).rev() { swap(i, below(i + 1)) }`.

use rand::RngCore;
use rand_chacha::ChaCha8Rng;

/// Uniform integer in `0..n` (`n ≥ 1`); see the module docs.
pub(crate) fn below(rng: &mut ChaCha8Rng, n: u32) -> u32 {
    debug_assert!(n >= 1);
    let n64 = u64::from(n.max(1));
    let zone = (1u64 << 32) - ((1u64 << 32) % n64);
    loop {
        let v = u64::from(rng.next_u32());
        if v < zone {
            return (v % n64) as u32;
        }
    }
}

/// In-place Fisher–Yates shuffle; see the module docs.
pub(crate) fn shuffle<T>(rng: &mut ChaCha8Rng, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = below(rng, (i + 1) as u32) as usize;
        items.swap(i, j);
    }
}
