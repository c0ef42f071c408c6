//! Turning off the kernel's read fault-around over a memory image.
//!
//! A memory image is mapped privately from a file (a memfd). When the guest
//! reads a page of it that is not yet mapped, Linux maps that page and, by
//! "fault-around", up to 15 neighbours already in the page cache (64 KiB by
//! default). An interpreter's guest reads scattered pages of its heap image,
//! so a read of 1 page in 16 maps the whole image into the instance: every
//! instance's resident set then counts most of the image again (the pages
//! are shared, but each mapping of them is counted), the page tables grow
//! with it, and each fault does the work of 16.
//!
//! The kernel has no per-mapping switch for it, except one: it never faults
//! around in a mapping registered with userfaultfd in write-protect mode.
//! Registering asks for nothing else: no page is ever write-protected, so
//! no userfaultfd event is ever raised and nobody reads the descriptor. The
//! registration ends with the mapping (a later `mmap` over the range).
//!
//! Best effort: where userfaultfd is not allowed (a seccomp profile, or
//! `vm.unprivileged_userfaultfd = 0` on a kernel older than 5.11) or the
//! image is not in shared memory (a `.cwasm` file on disk: write-protect
//! mode is for anonymous and shared memory only), the mapping keeps the
//! kernel's default. Set `WASMTIME_FAULT_AROUND=1` to keep it everywhere.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

// From <linux/userfaultfd.h>; the ioctl numbers are `_IOWR(0xAA, nr, size)`
// in the generic encoding (x86-64, aarch64, riscv64).
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
const UFFD_API: u64 = 0xAA;
const UFFDIO_API: libc::Ioctl = 0xC018_AA3F_u32 as libc::Ioctl;
const UFFDIO_REGISTER: libc::Ioctl = 0xC020_AA00_u32 as libc::Ioctl;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

/// The process's userfaultfd, when it may have one.
fn userfaultfd() -> Option<RawFd> {
    static FD: OnceLock<Option<OwnedFd>> = OnceLock::new();
    FD.get_or_init(|| {
        if std::env::var_os("WASMTIME_FAULT_AROUND").is_some_and(|v| v == "1") {
            return None;
        }
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        // Handling only faults from user mode needs no privilege (5.11+).
        let fd = [flags | UFFD_USER_MODE_ONLY, flags]
            .into_iter()
            .find_map(|f| {
                // SAFETY: a plain system call; a descriptor or -1 comes back.
                let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, f) };
                (fd >= 0).then(|| fd as RawFd)
            })?;
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: 0,
            ioctls: 0,
        };
        // SAFETY: `api` is the struct this ioctl reads and writes.
        let ok = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api) };
        (ok == 0).then_some(fd)
    })
    .as_ref()
    .map(AsRawFd::as_raw_fd)
}

/// Turns off fault-around over `len` bytes at `base`, an image's private
/// file mapping just made (see the module's comment); does nothing where
/// it cannot.
pub fn disable(base: *mut u8, len: usize) {
    let Some(fd) = userfaultfd() else { return };
    let mut register = UffdioRegister {
        start: base as u64,
        len: len as u64,
        mode: UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    // SAFETY: `register` is the struct this ioctl reads and writes; the
    // range is a mapping this process owns. A failure (EINVAL for a file
    // on disk) leaves the mapping as it was.
    unsafe {
        libc::ioctl(fd, UFFDIO_REGISTER, &mut register);
    }
}
