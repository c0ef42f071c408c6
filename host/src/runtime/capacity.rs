//! How many plugin instances this machine can hold at once, derived from
//! the kernel's limits at start-up, so the server refuses work it cannot
//! take (429, retryable) instead of failing it (500).
//!
//! What one live instance costs (wasmtime's pooling allocator; the mappings
//! are checked by the e2e test `past_its_capacity_the_server_answers_429_never_500`):
//! - memory mappings: its fiber stack and the stack's guard page (2, made
//!   for every slot of the pool at start), and its linear memory split into
//!   zero-filled pages, the copy-on-write image of its data and the
//!   inaccessible rest of the slot (up to 4): [`MAPPINGS_PER_INSTANCE`]. The
//!   kernel refuses a process more than `vm.max_map_count` of them.
//! - address space: its linear memory's reservation and guard, and its
//!   stack ([`Reservation`]).
//! - resident memory: the host's state of a rollout in flight (HTTP
//!   connection, store, instance, touched stack and guest pages), about
//!   [`RESIDENT_PER_INSTANCE`] for a small agent.
//! - open files: its connection to the trainer, and the connection its init
//!   came on ([`FILES_PER_INSTANCE`]; the server lifts its open-file limit
//!   as far as the kernel lets it at start).

/// Memory mappings one live instance can add.
pub const MAPPINGS_PER_INSTANCE: usize = 6;
/// Mappings kept free for everything else the process maps (allocator
/// arenas, thread stacks, libraries loaded later).
const MAPPINGS_RESERVE: usize = 2048;
/// Resident memory counted per rollout in flight.
pub const RESIDENT_PER_INSTANCE: u64 = 256 << 10;
/// Open files one rollout in flight can hold.
pub const FILES_PER_INSTANCE: u64 = 2;
/// Open files kept free for the listener, logs and plugin files.
const FILES_RESERVE: u64 = 256;
/// The user address space of a 64-bit Linux process (47 bits).
const USER_ADDRESS_SPACE: u64 = 1 << 47;

/// Address space one instance reserves.
#[derive(Debug, Clone, Copy)]
pub struct Reservation {
    pub memory: u64,
    pub guard: u64,
    pub stack: u64,
}

impl Reservation {
    fn per_instance(&self) -> u64 {
        // A guard before and after each linear memory.
        self.memory + 2 * self.guard + self.stack
    }
}

/// The resource that bounds the instances a machine can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    MapCount,
    AddressSpace,
    Memory,
    OpenFiles,
}

impl Bound {
    pub fn name(self) -> &'static str {
        match self {
            Bound::MapCount => "vm.max_map_count",
            Bound::AddressSpace => "address space",
            Bound::Memory => "memory",
            Bound::OpenFiles => "open-file limit",
        }
    }

    /// How an operator raises it.
    pub fn hint(self) -> &'static str {
        match self {
            Bound::MapCount => "raise it with `sysctl -w vm.max_map_count=1048576`",
            Bound::AddressSpace => {
                "raise the address-space limit (`ulimit -v`) or lower --max-memory-mib"
            }
            Bound::Memory => "give the server more memory",
            Bound::OpenFiles => "raise it with `ulimit -n` (or LimitNOFILE= in a systemd unit)",
        }
    }
}

/// The instances this machine can hold and what bounds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineCapacity {
    pub instances: usize,
    pub bound: Bound,
    /// The limit's value (mappings, bytes of address space or of memory).
    pub limit: u64,
}

/// What the kernel says about this process now.
#[derive(Debug, Clone, Copy)]
pub struct MachineFacts {
    pub max_map_count: u64,
    pub mappings_now: u64,
    /// Address space the process may use (`RLIMIT_AS`, at most 47 bits).
    pub address_space: u64,
    pub address_space_used: u64,
    /// Memory available to the process (`MemAvailable`, or the cgroup's
    /// limit less its use when lower).
    pub memory_available: u64,
    /// `RLIMIT_NOFILE` (soft).
    pub open_files: u64,
}

impl MachineFacts {
    /// Reads /proc and the cgroup; a fact it cannot read does not bound.
    pub fn read() -> Self {
        let max_map_count = proc_number("/proc/sys/vm/max_map_count").unwrap_or(u64::MAX);
        let mappings_now = std::fs::read_to_string("/proc/self/maps")
            .map_or(0, |maps| maps.lines().count() as u64);
        let address_space_used = status_kib("/proc/self/status", "VmSize:").unwrap_or(0) << 10;
        Self {
            max_map_count,
            mappings_now,
            open_files: rlimit(libc::RLIMIT_NOFILE),
            address_space: rlimit(libc::RLIMIT_AS).min(USER_ADDRESS_SPACE),
            address_space_used,
            memory_available: memory_available(),
        }
    }

    /// The instances these facts allow, each reserving `reservation`.
    pub fn capacity(&self, reservation: Reservation) -> MachineCapacity {
        let by_maps = self
            .max_map_count
            .saturating_sub(self.mappings_now + MAPPINGS_RESERVE as u64)
            / MAPPINGS_PER_INSTANCE as u64;
        // An eighth of what is free stays for the heap, threads and code.
        let free_space = self.address_space.saturating_sub(self.address_space_used);
        let by_address = (free_space - free_space / 8) / reservation.per_instance().max(1);
        let by_memory = self.memory_available / RESIDENT_PER_INSTANCE;
        let by_files = self.open_files.saturating_sub(FILES_RESERVE) / FILES_PER_INSTANCE;
        let (instances, bound, limit) = [
            (by_maps, Bound::MapCount, self.max_map_count),
            (by_address, Bound::AddressSpace, self.address_space),
            (by_memory, Bound::Memory, self.memory_available),
            (by_files, Bound::OpenFiles, self.open_files),
        ]
        .into_iter()
        .min_by_key(|(n, _, _)| *n)
        .unwrap_or((u64::MAX, Bound::Memory, u64::MAX));
        MachineCapacity {
            instances: usize::try_from(instances).unwrap_or(usize::MAX),
            bound,
            limit,
        }
    }
}

/// Each rollout in flight holds a connection to the trainer, and a step's
/// inits arrive on as many connections: lift the open-file limit as far as
/// the kernel allows this process (the hard limit too, when privileged),
/// else the soft limit to the hard one, as servers for many connections do.
pub fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let most = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|n| n.trim().parse::<libc::rlim_t>().ok())
        .unwrap_or(0);
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if most > limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: most,
                rlim_max: most,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return;
            }
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!("cannot raise the open-file limit");
            }
        }
    }
}

/// Keeps this process's memory in 4 KiB pages. With transparent huge
/// pages, khugepaged fills any 2 MiB region of the heap that has one page
/// in use to a whole huge page, in the background: an idle server's RSS
/// then grows by itself (measured: +20 MiB a minute after a burst), and
/// memory a burst freed never returns.
pub fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE only sets a flag of this process.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// A file holding one number (/proc/sys, cgroup files).
fn proc_number(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A `Key:   N kB` line of a /proc status file, in KiB.
fn status_kib(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// A resource's soft limit (`u64::MAX` when unlimited or unknown).
fn rlimit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    let rc = unsafe { libc::getrlimit(resource, &mut limit) };
    if rc != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        limit.rlim_cur
    }
}

/// Memory available to this process now: `MemAvailable`, or its cgroup's
/// limit less its use when lower (`u64::MAX` when unknown).
fn memory_available() -> u64 {
    let available = status_kib("/proc/meminfo", "MemAvailable:").map_or(u64::MAX, |kib| kib << 10);
    match (
        proc_number("/sys/fs/cgroup/memory.max"),
        proc_number("/sys/fs/cgroup/memory.current"),
    ) {
        (Some(max), Some(current)) => available.min(max.saturating_sub(current)),
        _ => available,
    }
}

/// Most memory a plugin's warm pool may keep resident between rollouts: a
/// quarter of the memory available when it is made, at least 256 MiB and
/// at most 16 GiB.
pub fn warm_memory_budget() -> u64 {
    (memory_available() / 4).clamp(256 << 20, 16 << 30)
}

/// Whether this kernel has the `PAGEMAP_SCAN` ioctl (Linux >= 6.7), with
/// which a pooled slot finds the pages its rollout wrote and resets only
/// those. Probed as wasmtime probes it: an empty scan of
/// /proc/self/pagemap. Without it a slot resets all the memory it keeps.
pub fn pagemap_scan_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(probe_pagemap_scan)
}

#[cfg(target_os = "linux")]
fn probe_pagemap_scan() -> bool {
    use std::os::fd::AsRawFd;

    /// `struct pm_scan_arg` of linux/fs.h.
    #[repr(C)]
    struct PmScanArg {
        size: u64,
        flags: u64,
        start: u64,
        end: u64,
        walk_end: u64,
        vec: u64,
        vec_len: u64,
        max_pages: u64,
        category_inverted: u64,
        category_mask: u64,
        category_anyof_mask: u64,
        return_mask: u64,
    }
    /// `struct page_region` of linux/fs.h.
    #[repr(C)]
    struct PageRegion {
        start: u64,
        end: u64,
        categories: u64,
    }
    /// `_IOWR('f', 16, struct pm_scan_arg)`.
    const PAGEMAP_SCAN: u64 =
        (3 << 30) | ((size_of::<PmScanArg>() as u64) << 16) | (0x66 << 8) | 16;
    /// The categories this ABI defines (`PM_SCAN_CATEGORIES`).
    const ALL_CATEGORIES: u64 = 0xff;

    let Ok(pagemap) = std::fs::File::open("/proc/self/pagemap") else {
        return false;
    };
    let mut region = PageRegion {
        start: 0,
        end: 0,
        categories: 0,
    };
    let mut arg = PmScanArg {
        size: size_of::<PmScanArg>() as u64,
        flags: 0,
        start: 0,
        end: 0,
        walk_end: 0,
        vec: (&raw mut region) as u64,
        vec_len: 1,
        max_pages: 1,
        category_inverted: 0,
        category_mask: ALL_CATEGORIES,
        category_anyof_mask: 0,
        return_mask: 0,
    };
    // SAFETY: the ioctl reads `arg` and writes at most `vec_len` regions
    // into `region` and `walk_end` into `arg`, all of which outlive it; an
    // empty range scans no memory. A kernel without it answers ENOTTY.
    let rc = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &raw mut arg) };
    rc >= 0
}

#[cfg(not(target_os = "linux"))]
fn probe_pagemap_scan() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESERVATION: Reservation = Reservation {
        memory: 4 << 30,
        guard: 32 << 20,
        stack: 3 << 19,
    };

    fn facts() -> MachineFacts {
        MachineFacts {
            max_map_count: 65_530,
            mappings_now: 300,
            address_space: USER_ADDRESS_SPACE,
            address_space_used: 1 << 30,
            memory_available: 24 << 30,
            open_files: 1 << 20,
        }
    }

    #[test]
    fn the_default_map_count_bounds_a_24_gib_machine() {
        let capacity = facts().capacity(RESERVATION);
        assert_eq!(capacity.bound, Bound::MapCount);
        assert_eq!(capacity.instances, (65_530 - 300 - 2048) / 6);
        assert!(capacity.instances > 10_064, "a step of 10,000 fits");
    }

    #[test]
    fn a_raised_map_count_leaves_address_space_or_memory_as_the_bound() {
        let raised = MachineFacts {
            max_map_count: 1 << 20,
            ..facts()
        };
        let capacity = raised.capacity(RESERVATION);
        assert_eq!(capacity.bound, Bound::AddressSpace);
        let free = USER_ADDRESS_SPACE - (1 << 30);
        assert_eq!(
            capacity.instances as u64,
            (free - free / 8) / RESERVATION.per_instance()
        );
        let small = MachineFacts {
            memory_available: 512 << 20,
            ..raised
        };
        assert_eq!(small.capacity(RESERVATION).bound, Bound::Memory);
        assert_eq!(small.capacity(RESERVATION).instances, 2048);
        let few_files = MachineFacts {
            open_files: 1024,
            ..facts()
        };
        assert_eq!(few_files.capacity(RESERVATION).bound, Bound::OpenFiles);
        assert_eq!(few_files.capacity(RESERVATION).instances, 384);
    }

    #[test]
    fn this_machine_can_be_read() {
        let facts = MachineFacts::read();
        assert!(facts.max_map_count > 0 && facts.mappings_now > 0);
        assert!(facts.capacity(RESERVATION).instances > 0);
    }
}
