//! How the coordinator's allocator hands memory back.
//!
//! A round allocates model-sized buffers (sums, decoded models, upload chunks) on
//! whichever tokio thread runs it. glibc's allocator serves a large allocation from its
//! own mapping, returned to the system when freed, but raises that threshold to the size of
//! every such block freed (up to 32 MiB): after the first round, model-sized buffers come
//! from the per-thread heaps instead, and each heap keeps its high-water mark. The
//! coordinator's resident memory then grew round after round (320, 415, 677 MiB over three
//! rounds at 100 facilities × 10⁶ parameters). A fixed threshold keeps large blocks out of
//! the heaps.
//!
//! The smaller blocks (messages, chunks below the threshold, database rows) still went to
//! one heap per thread that ever allocated, up to eight per core, each keeping its own free
//! fragments: the peak crept up by 10 to 30 MiB a round (193 to 300 MiB over six rounds).
//! With one heap for the whole process it levels off (179 to 199 MiB, flat from the fourth
//! round) at no CPU cost this benchmark could see: the coordinator's hot paths allocate
//! little (docs/performance.md).

/// Blocks this large or larger get their own mapping, given back when freed.
pub const MMAP_THRESHOLD_BYTES: i32 = 256 << 10;

/// Heaps (glibc "arenas") the allocator may create.
pub const ARENAS: i32 = 1;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD_BYTES`] and its heaps at [`ARENAS`]
/// (no effect elsewhere). Call it before the runtime starts its threads.
pub fn return_large_blocks_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt takes the allocator's own lock and only changes a tunable; it
        // has no pointer arguments. The workspace's only uses of `unsafe` are here and in
        // one other place.
        #[allow(unsafe_code)]
        let threshold = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) };
        #[allow(unsafe_code)]
        let arenas = unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENAS) };
        if threshold != 1 || arenas != 1 {
            tracing::warn!("could not set the allocator's mmap threshold and heap count");
        }
    }
}
