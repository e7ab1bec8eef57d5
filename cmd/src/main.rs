fn main() {
    large_buffers_from_the_kernel();
    std::process::exit(kubectl_volbackup::run());
}

/// Makes every allocation of 1 MiB or more a mapping of its own, returned to the kernel when
/// freed. By default glibc raises that threshold after the first large free, and later pack
/// and read buffers then come from per-thread arenas that keep their pages: a 512 MiB backup
/// through S3 peaked at about 200 MiB of RSS that way and at about 150 MiB with this (2 cores,
/// 2026-12-06), at the same speed; a backup to a local directory was unchanged. The buffers a
/// backup or restore uses again and again are pooled, so the extra mappings are few.
fn large_buffers_from_the_kernel() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only changes a setting of the allocator; it runs before any other
    // thread exists, and a failure (return 0) leaves glibc's default in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
