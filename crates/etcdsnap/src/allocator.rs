//! How glibc's allocator gives memory back, set once at start.
//!
//! Each save allocates about 20 MiB for a few seconds (zstd's buffers, an S3 part) and frees
//! it. glibc gives blocks of 128 KiB and more mappings of their own, unmapped when freed, but
//! the first free of such a block raises that limit to the block's size (up to 32 MiB), and the
//! size a heap must have free at its top before it is trimmed to twice that. From then on the
//! next saves' buffers come from the heaps of whichever threads run them, and up to twice their
//! size can stay resident in each of those heaps once freed. A heap profile of the soak's
//! agents showed 1-2 MiB live between saves and peaks of 20-24 MiB during them, no growth of
//! what was live, while in another run one agent's resident size grew by 11 MiB (20%) over 11
//! minutes. Setting the limit explicitly keeps it at glibc's default and turns its rise off,
//! so large buffers are unmapped as soon as they are freed.

/// Blocks this large and larger get their own mapping (glibc's default, kept fixed).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Fixes glibc's mapping threshold (see the module comment). Elsewhere: nothing to do.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    set_mmap_threshold();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_mmap_threshold() {
    // SAFETY: mallopt only changes the allocator's parameters, under its own lock; it reads and
    // writes no memory of ours. It returns 0 when it refuses the value, which leaves glibc's
    // behaviour as it was: worth a note, not a failure.
    let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    if set == 0 {
        eprintln!("etcdsnap: glibc refused its mmap threshold; memory freed after a save may stay resident");
    }
}
