//! What a guest may touch: page-aligned host ranges with an access mode,
//! and the helper that finds this process's code and read-only data in
//! `/proc/self/maps`.
//!
//! The guest runs Dune-style: guest-physical address == host-virtual
//! address, so a [`Region`] names a range of *this process's* memory and the
//! guest sees it at the same address. Nothing that is not in a region is
//! reachable from the guest.
//!
//! `/proc/self/maps` format: proc(5), "/proc/pid/maps". A line is
//! `start-end perms offset dev inode [path]` with hexadecimal addresses.

use std::fmt;

/// Size of the pages the guest page tables map.
pub const PAGE_SIZE: u64 = 4096;

/// Lowest address above the lower canonical half: user-space addresses on
/// x86-64 with 4-level paging are below this.
pub const USER_ADDRESS_LIMIT: u64 = 1 << 47;

/// How the guest may use a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Read and execute; never written (a read-only memory slot).
    Code,
    /// Read only, not executable (a read-only memory slot): read-only data,
    /// RX buffer pools.
    ReadOnly,
    /// Read and write, not executable: heap arena, stacks, TLS, TX pools,
    /// rings.
    ReadWrite,
}

impl Access {
    /// Whether the guest may write the region.
    pub fn writable(self) -> bool {
        matches!(self, Access::ReadWrite)
    }

    /// Whether the guest may execute the region.
    pub fn executable(self) -> bool {
        matches!(self, Access::Code)
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Code => "code (r-x)",
            Access::ReadOnly => "read-only (r--)",
            Access::ReadWrite => "read-write (rw-)",
        })
    }
}

/// Errors in describing a region.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegionError {
    /// Start or length is not a multiple of [`PAGE_SIZE`].
    #[error(
        "region {name}: {start:#x}+{len:#x} is not page-aligned — allocate it page-aligned \
         (mmap, or an aligned arena); rounding outward would expose its neighbours"
    )]
    Unaligned {
        /// Region name.
        name: String,
        /// Start address.
        start: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Zero length.
    #[error("region {name} is empty")]
    Empty {
        /// Region name.
        name: String,
    },
    /// The range leaves the lower canonical half (user addresses).
    #[error(
        "region {name}: {start:#x}+{len:#x} is not a user-space range (must end at or below {limit:#x})"
    )]
    OutOfRange {
        /// Region name.
        name: String,
        /// Start address.
        start: u64,
        /// Length in bytes.
        len: u64,
        /// The limit it crossed.
        limit: u64,
    },
}

/// A page-aligned range of host memory the guest may touch, at the same
/// address, with an access mode.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Region {
    name: String,
    start: u64,
    len: u64,
    access: Access,
}

impl Region {
    /// Describes `len` bytes at host address `start`. Both must be
    /// page-aligned, the range non-empty and in user space.
    pub fn new(
        name: impl Into<String>,
        start: u64,
        len: u64,
        access: Access,
    ) -> Result<Self, RegionError> {
        let name = name.into();
        if len == 0 {
            return Err(RegionError::Empty { name });
        }
        if !start.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(RegionError::Unaligned { name, start, len });
        }
        match start.checked_add(len) {
            Some(end) if end <= USER_ADDRESS_LIMIT => {}
            _ => {
                return Err(RegionError::OutOfRange {
                    name,
                    start,
                    len,
                    limit: USER_ADDRESS_LIMIT,
                })
            }
        }
        Ok(Region {
            name,
            start,
            len,
            access,
        })
    }

    /// Describes the memory at `ptr` (see [`Region::new`]).
    pub fn from_ptr(
        name: impl Into<String>,
        ptr: *const u8,
        len: usize,
        access: Access,
    ) -> Result<Self, RegionError> {
        Region::new(name, ptr as u64, len as u64, access)
    }

    /// The region's name (shown in fault reports).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// First address.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false: regions are never empty (kept for the `len` idiom).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }

    /// The access mode.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Whether `addr` lies in the region.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.start && addr < self.end()
    }

    /// The same region cut to `[start, end)` (which must be page-aligned
    /// and inside it).
    pub(crate) fn piece(&self, start: u64, end: u64) -> Region {
        debug_assert!(start >= self.start && end <= self.end() && start < end);
        Region {
            name: self.name.clone(),
            start,
            len: end - start,
            access: self.access,
        }
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{:#x}..{:#x}) {}",
            self.name,
            self.start,
            self.end(),
            self.access
        )
    }
}

/// What a guest access needs from the memory it touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Reading.
    Read,
    /// Writing.
    Write,
}

/// A sorted set of non-overlapping regions: what the guest has mapped.
#[derive(Clone, Debug, Default)]
pub struct RegionTable {
    regions: Vec<Region>,
}

impl RegionTable {
    /// An empty table.
    pub fn new() -> Self {
        RegionTable::default()
    }

    /// The regions, sorted by address.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The region holding `addr`, if any.
    pub fn find(&self, addr: u64) -> Option<&Region> {
        let i = self.regions.partition_point(|r| r.end() <= addr);
        self.regions.get(i).filter(|r| r.contains(addr))
    }

    /// The parts of `region` not yet in the table, as pieces of it (an
    /// overlapping part keeps the access it was first mapped with).
    pub fn uncovered(&self, region: &Region) -> Vec<Region> {
        let mut pieces = Vec::new();
        let mut at = region.start();
        let first = self.regions.partition_point(|r| r.end() <= at);
        for r in &self.regions[first..] {
            if r.start() >= region.end() {
                break;
            }
            if r.start() > at {
                pieces.push(region.piece(at, r.start()));
            }
            at = at.max(r.end());
        }
        if at < region.end() {
            pieces.push(region.piece(at, region.end()));
        }
        pieces
    }

    /// Adds a region that overlaps none in the table.
    pub(crate) fn insert(&mut self, region: Region) {
        let i = self.regions.partition_point(|r| r.start() < region.start());
        debug_assert!(i == 0 || self.regions[i - 1].end() <= region.start());
        debug_assert!(i == self.regions.len() || region.end() <= self.regions[i].start());
        self.regions.insert(i, region);
    }

    /// Removes the region starting at `start`.
    pub(crate) fn remove(&mut self, start: u64) -> Option<Region> {
        let i = self.regions.iter().position(|r| r.start() == start)?;
        Some(self.regions.remove(i))
    }

    /// Whether every byte of `[addr, addr + len)` lies in regions the guest
    /// may use for `need`. An empty range is allowed anywhere.
    pub fn allows(&self, addr: u64, len: u64, need: Need) -> bool {
        if len == 0 {
            return true;
        }
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        let mut at = addr;
        while at < end {
            match self.find(at) {
                Some(r) if need == Need::Read || r.access().writable() => at = r.end(),
                _ => return false,
            }
        }
        true
    }
}

/// Errors in reading `/proc/self/maps`.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    /// The file could not be read.
    #[error("cannot read /proc/self/maps: {0} — is /proc mounted?")]
    Read(#[from] std::io::Error),
    /// A line did not have the documented shape.
    #[error("/proc/self/maps line {line}: cannot parse {text:?}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
}

/// One line of `/proc/self/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapsEntry {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
    /// Shared (`s`) rather than private (`p`).
    pub shared: bool,
    /// Offset into the file.
    pub offset: u64,
    /// Path or pseudo-name (`[heap]`, `[vdso]`…); empty for anonymous memory.
    pub path: String,
}

/// Parses the text of a maps file. Kernel addresses (`[vsyscall]`) are
/// kept; callers filter.
pub fn parse_maps(text: &str) -> Result<Vec<MapsEntry>, MapsError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            parse_maps_line(l).ok_or_else(|| MapsError::Parse {
                line: i + 1,
                text: l.to_string(),
            })
        })
        .collect()
}

fn parse_maps_line(line: &str) -> Option<MapsEntry> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?.as_bytes();
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let _inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim_start().to_string();
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    if perms.len() != 4 || end <= start {
        return None;
    }
    Some(MapsEntry {
        start,
        end,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        offset: u64::from_str_radix(offset, 16).ok()?,
        path,
    })
}

/// The process image as the guest needs it: code and read-only data of the
/// executable and its shared libraries (and the vDSO), and separately their
/// writable data (`.data`, `.bss`), which a caller maps only when the code
/// run in the guest uses writable statics (glibc's `malloc` does).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessImage {
    /// Code ([`Access::Code`]) and read-only data, RELRO included
    /// ([`Access::ReadOnly`]); `[vdso]` as code, `[vvar]`/`[vvar_vclock]`
    /// read-only so the vDSO clock works without a system call.
    pub code_and_rodata: Vec<Region>,
    /// Writable data of the same objects ([`Access::ReadWrite`]): the parts
    /// of private writable mappings that lie in an object's writable
    /// `PT_LOAD` segment. The bound matters: the kernel merges an object's
    /// `.bss` with any anonymous mapping placed right after it, so the
    /// maps line alone may cover unrelated memory.
    pub data: Vec<Region>,
}

impl ProcessImage {
    /// Reads `/proc/self/maps` and the loaded objects' program headers.
    pub fn current() -> Result<Self, MapsError> {
        let text = std::fs::read_to_string("/proc/self/maps")?;
        Ok(Self::from_entries(
            &parse_maps(&text)?,
            &crate::sys::writable_segments(),
        ))
    }

    /// Classifies parsed maps entries. An *object* is a file with at least
    /// one executable mapping; other files (locale archives, data files the
    /// program mapped) are not part of the image. `writable_segments` are
    /// the objects' writable `PT_LOAD` ranges `[start, end)` in memory.
    pub fn from_entries(entries: &[MapsEntry], writable_segments: &[(u64, u64)]) -> Self {
        let objects: Vec<&str> = entries
            .iter()
            .filter(|e| e.exec && e.path.starts_with('/'))
            .map(|e| e.path.as_str())
            .collect();
        let mut image = ProcessImage::default();
        for e in entries {
            if e.end > USER_ADDRESS_LIMIT || !e.read {
                continue;
            }
            let is_object = objects.contains(&e.path.as_str());
            let pseudo_ro = e.path == "[vvar]" || e.path == "[vvar_vclock]";
            let region = |access| Region::new(e.path.clone(), e.start, e.end - e.start, access);
            if (is_object || e.path == "[vdso]") && e.exec && !e.write {
                image.code_and_rodata.extend(region(Access::Code));
            } else if (is_object && !e.write && !e.shared) || (pseudo_ro && !e.write) {
                image.code_and_rodata.extend(region(Access::ReadOnly));
            } else if e.write && !e.shared && (is_object || e.path.is_empty()) {
                for &(seg_start, seg_end) in writable_segments {
                    let start = page_down(seg_start).max(e.start);
                    let end = page_up(seg_end).min(e.end);
                    if start < end {
                        let name = if e.path.is_empty() {
                            String::from("[bss]")
                        } else {
                            e.path.clone()
                        };
                        image
                            .data
                            .extend(Region::new(name, start, end - start, Access::ReadWrite));
                    }
                }
            }
        }
        image
    }
}

/// Rounds `x` down to a page boundary.
pub fn page_down(x: u64) -> u64 {
    x & !(PAGE_SIZE - 1)
}

/// Rounds `x` up to a page boundary (saturating at the top page).
pub fn page_up(x: u64) -> u64 {
    x.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
562471a02000-562471a04000 r--p 00000000 fe:00 247282                     /usr/bin/head
562471a04000-562471a0a000 r-xp 00002000 fe:00 247282                     /usr/bin/head
562471a0a000-562471a0d000 r--p 00008000 fe:00 247282                     /usr/bin/head
562471a0e000-562471a0f000 rw-p 0000b000 fe:00 247282                     /usr/bin/head
562471a0f000-562471a11000 rw-p 00000000 00:00 0 
5624a86fd000-5624a871e000 rw-p 00000000 00:00 0                          [heap]
7f3680ed3000-7f3680f2a000 r--p 00000000 fe:00 316534                     /usr/lib/locale/C.utf8/LC_CTYPE
7f3680f2f000-7f3680f55000 r--p 00000000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6
7f3680f55000-7f36810ab000 r-xp 00026000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6
7f3681102000-7f3681104000 rw-p 001d3000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6
7f3681104000-7f3681111000 rw-p 00000000 00:00 0 
7f3681119000-7f3681120000 r--s 00000000 fe:00 325745                     /usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache
7f3681123000-7f3681127000 r--p 00000000 00:00 0                          [vvar]
7f3681127000-7f3681129000 r--p 00000000 00:00 0                          [vvar_vclock]
7f3681129000-7f368112b000 r-xp 00000000 00:00 0                          [vdso]
7f368115e000-7f3681160000 rw-p 00033000 fe:00 325843                     /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
7fffcecea000-7fffced0b000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    fn r(name: &str, start: u64, len: u64, access: Access) -> Region {
        Region::new(name, start, len, access).unwrap()
    }

    #[test]
    fn maps_lines_parse_with_and_without_path() {
        let e = parse_maps(MAPS).unwrap();
        assert_eq!(e.len(), 18);
        assert_eq!(e[1].start, 0x562471a04000);
        assert!(e[1].read && e[1].exec && !e[1].write && !e[1].shared);
        assert_eq!(e[1].offset, 0x2000);
        assert_eq!(e[4].path, "");
        assert!(e[11].shared);
        assert_eq!(e[17].path, "[vsyscall]");
    }

    #[test]
    fn maps_path_with_spaces_is_kept_whole() {
        let e = parse_maps("1000-2000 r-xp 00000000 fe:00 1 /tmp/a b (deleted)\n").unwrap();
        assert_eq!(e[0].path, "/tmp/a b (deleted)");
    }

    #[test]
    fn truncated_or_corrupt_maps_lines_are_errors() {
        for bad in [
            "562471a02000-562471a04000",
            "562471a02000 r--p 0 fe:00 1",
            "zz-562471a04000 r--p 00000000 fe:00 1",
            "2000-1000 r--p 00000000 fe:00 1",
            "1000-2000 r-p 00000000 fe:00 1",
            "1000-2000 r--p xyz fe:00 1",
        ] {
            assert!(
                matches!(parse_maps(bad), Err(MapsError::Parse { line: 1, .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn image_holds_object_code_rodata_and_vdso_only() {
        let img = ProcessImage::from_entries(&parse_maps(MAPS).unwrap(), &[]);
        assert!(img.data.is_empty());
        let names: Vec<(&str, Access)> = img
            .code_and_rodata
            .iter()
            .map(|r| (r.name(), r.access()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("/usr/bin/head", Access::ReadOnly),
                ("/usr/bin/head", Access::Code),
                ("/usr/bin/head", Access::ReadOnly),
                ("/usr/lib/x86_64-linux-gnu/libc.so.6", Access::ReadOnly),
                ("/usr/lib/x86_64-linux-gnu/libc.so.6", Access::Code),
                ("[vvar]", Access::ReadOnly),
                ("[vvar_vclock]", Access::ReadOnly),
                ("[vdso]", Access::Code),
            ]
        );
    }

    #[test]
    fn image_data_is_bounded_by_the_writable_segments() {
        // head's data+bss segment ends inside the anonymous line (which the
        // kernel merged with a later mapping); libc's ends in its bss line.
        let segments = [
            (0x562471a0e2a0, 0x562471a0f4c8),
            (0x7f3681102ab0, 0x7f3681110a10),
            (0x5624a86fd000, 0x5624a86fe000),
        ];
        let img = ProcessImage::from_entries(&parse_maps(MAPS).unwrap(), &segments);
        let data: Vec<(&str, u64, u64)> = img
            .data
            .iter()
            .map(|r| (r.name(), r.start(), r.end()))
            .collect();
        assert_eq!(
            data,
            vec![
                ("/usr/bin/head", 0x562471a0e000, 0x562471a0f000),
                ("[bss]", 0x562471a0f000, 0x562471a10000),
                (
                    "/usr/lib/x86_64-linux-gnu/libc.so.6",
                    0x7f3681102000,
                    0x7f3681104000
                ),
                ("[bss]", 0x7f3681104000, 0x7f3681111000),
            ],
            "the heap line is not an object's, even inside a segment"
        );
        assert!(img.data.iter().all(|r| r.access() == Access::ReadWrite));
    }

    #[test]
    fn current_image_data_holds_this_programs_statics() {
        static mut COUNTER: u64 = 0;
        let img = ProcessImage::current().unwrap();
        let addr = &raw const COUNTER as u64;
        assert!(img.data.iter().any(|r| r.contains(addr)));
        assert!(img.code_and_rodata.iter().all(|r| !r.contains(addr)));
    }

    #[test]
    fn current_image_contains_this_function() {
        let img = ProcessImage::current().unwrap();
        let here = current_image_contains_this_function as *const () as u64;
        let hit = img.code_and_rodata.iter().find(|r| r.contains(here));
        assert_eq!(hit.map(|r| r.access()), Some(Access::Code));
    }

    #[test]
    fn regions_must_be_aligned_nonempty_user_ranges() {
        assert!(matches!(
            Region::new("a", 0x1001, 0x1000, Access::ReadOnly),
            Err(RegionError::Unaligned { .. })
        ));
        assert!(matches!(
            Region::new("a", 0x1000, 0x10, Access::ReadOnly),
            Err(RegionError::Unaligned { .. })
        ));
        assert!(matches!(
            Region::new("a", 0x1000, 0, Access::ReadOnly),
            Err(RegionError::Empty { .. })
        ));
        assert!(matches!(
            Region::new("a", USER_ADDRESS_LIMIT - 0x1000, 0x2000, Access::ReadOnly),
            Err(RegionError::OutOfRange { .. })
        ));
        assert!(matches!(
            Region::new("a", !0xfff, 0x2000, Access::ReadOnly),
            Err(RegionError::OutOfRange { .. })
        ));
    }

    #[test]
    fn table_finds_regions_and_checks_ranges_across_neighbours() {
        let mut t = RegionTable::new();
        t.insert(r("b", 0x3000, 0x1000, Access::ReadOnly));
        t.insert(r("a", 0x1000, 0x2000, Access::ReadWrite));
        t.insert(r("c", 0x8000, 0x1000, Access::ReadWrite));
        assert_eq!(t.find(0x1fff).map(Region::name), Some("a"));
        assert_eq!(t.find(0x3000).map(Region::name), Some("b"));
        assert_eq!(t.find(0x4000), None);
        assert_eq!(t.find(0x0), None);
        assert!(t.allows(0x1800, 0x2000, Need::Read));
        assert!(!t.allows(0x1800, 0x2000, Need::Write));
        assert!(t.allows(0x1800, 0x800, Need::Write));
        assert!(!t.allows(0x3800, 0x1000, Need::Read));
        assert!(!t.allows(u64::MAX - 1, 4, Need::Read));
        assert!(t.allows(0xdead, 0, Need::Write));
    }

    #[test]
    fn uncovered_pieces_skip_mapped_parts() {
        let mut t = RegionTable::new();
        t.insert(r("a", 0x2000, 0x1000, Access::ReadOnly));
        t.insert(r("b", 0x4000, 0x1000, Access::ReadOnly));
        let new = r("n", 0x1000, 0x5000, Access::ReadWrite);
        let pieces: Vec<(u64, u64)> = t
            .uncovered(&new)
            .iter()
            .map(|p| (p.start(), p.end()))
            .collect();
        assert_eq!(
            pieces,
            vec![(0x1000, 0x2000), (0x3000, 0x4000), (0x5000, 0x6000)]
        );
        assert!(t
            .uncovered(&r("x", 0x2000, 0x1000, Access::Code))
            .is_empty());
    }
}
