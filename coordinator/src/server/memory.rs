//! How the coordinator's allocator hands memory back.
//!
//! A round allocates model-sized buffers (sums, decoded models, upload chunks) on
//! whichever tokio thread runs it. glibc's allocator serves a large allocation from its
//! own mapping, returned to the system when freed, but raises that threshold to the size of
//! every such block freed (up to 32 MiB): after the first round, model-sized buffers come
//! from the per-thread heaps instead, and each heap keeps its high-water mark. The
//! coordinator's resident memory then grew round after round (320, 415, 677 MiB over three
//! rounds at 100 facilities × 10⁶ parameters). A fixed threshold keeps it flat (191, 210,
//! 216 MiB in the same benchmark; docs/performance.md).

/// Blocks this large or larger get their own mapping, given back when freed.
pub const MMAP_THRESHOLD_BYTES: i32 = 256 << 10;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD_BYTES`] (no effect elsewhere). Call it
/// before the runtime starts its threads.
pub fn return_large_blocks_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt takes the allocator's own lock and only changes a tunable; it
        // has no pointer arguments. One of the workspace's two uses of `unsafe`.
        #[allow(unsafe_code)]
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) };
        if ok != 1 {
            tracing::warn!("could not set the allocator's mmap threshold");
        }
    }
}
