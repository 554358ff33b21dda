//! What the target's word size bounds, checked on the host and as a 32-bit
//! x86 program (`make test` runs this file for `i686-unknown-linux-gnu`
//! too).

use strata::object::{Geometry, GeometryError};

/// A geometry is accepted only if its arena fits the address space: on a
/// 32-bit target an arena of 4 GiB or more (`arena_shift` 32 to 37, which
/// the pool limits alone allow) is refused, where it once passed and its
/// size wrapped, handing out overlapping blocks. Every accepted geometry's
/// sizes compute.
#[test]
fn arenas_past_the_address_space_are_refused() {
    for pool_shift in 11..=31 {
        for arena_shift in pool_shift + 2..=pool_shift + 6 {
            let g = Geometry { arena_shift, pool_shift, class_shift: 4, threshold: 512 };
            match g.validate() {
                Ok(g) => {
                    assert!(arena_shift < usize::BITS, "{g:?} accepted");
                    assert_eq!(g.arena_size(), 1 << arena_shift);
                    assert_eq!(g.pools_per_arena(), 1 << (arena_shift - pool_shift));
                }
                Err(e) => {
                    assert_eq!(e, GeometryError::ArenaSize(arena_shift), "{g:?}");
                    assert!(arena_shift >= usize::BITS, "{g:?} refused");
                }
            }
        }
    }
}
