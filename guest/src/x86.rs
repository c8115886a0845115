//! x86-64 system structures the guest needs: segment descriptors, interrupt
//! gates, the 64-bit TSS, control-register bits, and the few bytes of
//! machine code that turn a return, a system call or an exception into a
//! VM exit.
//!
//! References: Intel SDM vol. 3A §3.4.5 (segment descriptors), §6.14.1
//! (64-bit IDT gates), §8.7 (64-bit TSS), §2.5 (control registers),
//! vol. 2B `MOV` (opcodes A2/A3 with a 64-bit `moffs`). The GDT follows the
//! layout Linux user programs expect, so the selectors a host thread runs
//! with (CS 0x33, SS 0x2b) mean the same inside the guest.

/// Kernel code selector (64-bit, DPL 0) used by the IDT gates.
pub const KERNEL_CS: u16 = 0x10;
/// Kernel data selector.
pub const KERNEL_DS: u16 = 0x18;
/// 32-bit user code selector (STAR's SYSRET base, as on Linux).
pub const USER32_CS: u16 = 0x23;
/// User data/stack selector (RPL 3).
pub const USER_DS: u16 = 0x2b;
/// 64-bit user code selector (RPL 3).
pub const USER_CS: u16 = 0x33;
/// Task-state segment selector.
pub const TSS_SEL: u16 = 0x40;
/// GDT entries (8 bytes each; the TSS descriptor takes entries 8 and 9).
pub const GDT_ENTRIES: usize = 10;

/// CR0: protection enable, monitor coprocessor, extension type, numeric
/// error, write protect (ring 0 honours read-only pages), paging.
pub const CR0: u64 = (1 << 0) | (1 << 1) | (1 << 4) | (1 << 5) | (1 << 16) | (1 << 31);
/// CR4.PAE.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.OSFXSR (SSE enabled).
pub const CR4_OSFXSR: u64 = 1 << 9;
/// CR4.OSXMMEXCPT (SIMD exceptions delivered as #XM).
pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
/// CR4.FSGSBASE.
pub const CR4_FSGSBASE: u64 = 1 << 16;
/// CR4.OSXSAVE (XSAVE and AVX state enabled through XCR0).
pub const CR4_OSXSAVE: u64 = 1 << 18;
/// EFER: SYSCALL enable, long mode enable, long mode active, no-execute
/// enable.
pub const EFER: u64 = (1 << 0) | (1 << 8) | (1 << 10) | (1 << 11);

/// MSR STAR (SYSCALL/SYSRET selectors).
pub const MSR_STAR: u32 = 0xc000_0081;
/// MSR LSTAR (64-bit SYSCALL target).
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// MSR SFMASK (RFLAGS bits SYSCALL clears).
pub const MSR_SFMASK: u32 = 0xc000_0084;

/// RFLAGS with only the always-one bit set.
pub const RFLAGS_DEFAULT: u64 = 1 << 1;

/// Size of a 64-bit TSS without an I/O bitmap.
pub const TSS_SIZE: usize = 104;

/// Exceptions the IDT covers (vectors 0..32).
pub const EXCEPTION_VECTORS: usize = 32;
/// Bytes per exception handler stub.
pub const HANDLER_STRIDE: usize = 16;

/// A code or data segment descriptor (flat: base 0, limit 4 GiB).
/// `access` is the access byte (P, DPL, S, type), `flags` the G/D/L nibble.
fn flat_segment(access: u8, flags: u8) -> u64 {
    let limit_lo = 0xffffu64;
    let limit_hi = 0xfu64 << 48;
    limit_lo | (u64::from(access) << 40) | limit_hi | (u64::from(flags & 0xf) << 52)
}

/// The GDT: Linux's layout for the selectors above, and a 64-bit TSS
/// descriptor for `tss` (a TSS of [`TSS_SIZE`] bytes, busy). Access bytes
/// have the accessed bit set so loading a selector never writes the table.
pub fn gdt(tss: u64) -> [u64; GDT_ENTRIES] {
    const PRESENT: u8 = 0x80;
    const CODE_OR_DATA: u8 = 0x10;
    const CODE_RX_ACCESSED: u8 = 0x0b;
    const DATA_RW_ACCESSED: u8 = 0x03;
    const DPL3: u8 = 0x60;
    const G: u8 = 0x8;
    const DB: u8 = 0x4;
    const L: u8 = 0x2;
    let kcode = PRESENT | CODE_OR_DATA | CODE_RX_ACCESSED;
    let kdata = PRESENT | CODE_OR_DATA | DATA_RW_ACCESSED;
    let limit = (TSS_SIZE - 1) as u64;
    // Busy 64-bit TSS (type 0xb), present, DPL 0.
    let tss_lo = (limit & 0xffff)
        | ((tss & 0xff_ffff) << 16)
        | (0x8bu64 << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((tss >> 24) & 0xff) << 56);
    let tss_hi = tss >> 32;
    [
        0,
        flat_segment(kcode, G | DB),
        flat_segment(kcode, G | L),
        flat_segment(kdata, G | DB),
        flat_segment(kcode | DPL3, G | DB),
        flat_segment(kdata | DPL3, G | DB),
        flat_segment(kcode | DPL3, G | L),
        0,
        tss_lo,
        tss_hi,
    ]
}

/// A 64-bit interrupt gate (type 0xe, present, DPL 0) to `handler` in the
/// kernel code segment, as two little-endian u64 halves.
pub fn interrupt_gate(handler: u64) -> [u64; 2] {
    let lo = (handler & 0xffff)
        | (u64::from(KERNEL_CS) << 16)
        | (0x8eu64 << 40)
        | (((handler >> 16) & 0xffff) << 48);
    [lo, handler >> 32]
}

/// A 64-bit TSS whose ring-0 stack pointer is `rsp0`, with no I/O bitmap
/// (the bitmap offset points past the limit: every port is denied).
pub fn tss(rsp0: u64) -> [u8; TSS_SIZE] {
    let mut t = [0u8; TSS_SIZE];
    t[4..12].copy_from_slice(&rsp0.to_le_bytes());
    t[102..104].copy_from_slice(&(TSS_SIZE as u16).to_le_bytes());
    t
}

/// `mov [addr], rax` (REX.W A3 moffs64) then `ud2`: stores RAX to `addr`.
/// At an unbacked address the store is an MMIO exit carrying RAX.
pub fn store_rax_stub(addr: u64) -> [u8; 12] {
    let mut code = [0u8; 12];
    code[0] = 0x48;
    code[1] = 0xa3;
    code[2..10].copy_from_slice(&addr.to_le_bytes());
    code[10] = 0x0f;
    code[11] = 0x0b;
    code
}

/// `mov [addr], al` (A2 moffs64), `ud2`, padded with `int3` to
/// [`HANDLER_STRIDE`]: an exception handler whose MMIO exit address names
/// the vector.
pub fn store_al_stub(addr: u64) -> [u8; HANDLER_STRIDE] {
    let mut code = [0xccu8; HANDLER_STRIDE];
    code[0] = 0xa2;
    code[1..9].copy_from_slice(&addr.to_le_bytes());
    code[9] = 0x0f;
    code[10] = 0x0b;
    code
}

/// Whether exception `vector` pushes an error code (SDM vol. 3A table 6-1).
pub fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// The exception's mnemonic and name.
pub fn exception_name(vector: u8) -> &'static str {
    match vector {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack fault",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF x87 error",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD exception",
        20 => "#VE virtualization exception",
        21 => "#CP control protection",
        _ => "reserved exception",
    }
}

/// Page-fault error code bits (SDM vol. 3A §4.7).
pub mod pf {
    /// The page was present (a rights violation, not a missing page).
    pub const PRESENT: u64 = 1 << 0;
    /// The access was a write.
    pub const WRITE: u64 = 1 << 1;
    /// The access came from ring 3.
    pub const USER: u64 = 1 << 2;
    /// A reserved bit was set in an entry.
    pub const RSVD: u64 = 1 << 3;
    /// The access was an instruction fetch.
    pub const FETCH: u64 = 1 << 4;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_matches_the_flat_descriptors_linux_uses() {
        let g = gdt(0);
        assert_eq!(g[(KERNEL_CS >> 3) as usize], 0x00af_9b00_0000_ffff);
        assert_eq!(g[(KERNEL_DS >> 3) as usize], 0x00cf_9300_0000_ffff);
        assert_eq!(g[(USER32_CS >> 3) as usize], 0x00cf_fb00_0000_ffff);
        assert_eq!(g[(USER_DS >> 3) as usize], 0x00cf_f300_0000_ffff);
        assert_eq!(g[(USER_CS >> 3) as usize], 0x00af_fb00_0000_ffff);
    }

    #[test]
    fn tss_descriptor_splits_its_base_over_both_halves() {
        let base = 0x7f12_3456_7890u64;
        let g = gdt(base);
        let lo = g[(TSS_SEL >> 3) as usize];
        let hi = g[(TSS_SEL >> 3) as usize + 1];
        let got = ((lo >> 16) & 0xff_ffff) | (((lo >> 56) & 0xff) << 24) | (hi << 32);
        assert_eq!(got, base);
        assert_eq!(lo & 0xffff, (TSS_SIZE - 1) as u64);
        assert_eq!((lo >> 40) & 0xff, 0x8b);
    }

    #[test]
    fn interrupt_gate_holds_the_handler_address() {
        let h = 0x7fab_cdef_1234u64;
        let [lo, hi] = interrupt_gate(h);
        assert_eq!(
            (lo & 0xffff) | (((lo >> 48) & 0xffff) << 16) | (hi << 32),
            h
        );
        assert_eq!((lo >> 16) & 0xffff, u64::from(KERNEL_CS));
        assert_eq!((lo >> 40) & 0xff, 0x8e);
    }

    #[test]
    fn tss_holds_rsp0_and_denies_io() {
        let t = tss(0x1122_3344_5566_7788);
        assert_eq!(&t[4..12], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(u16::from_le_bytes([t[102], t[103]]) as usize, TSS_SIZE);
    }

    #[test]
    fn stubs_encode_absolute_stores() {
        let s = store_rax_stub(0x1122_3344_5566);
        assert_eq!(&s[..2], &[0x48, 0xa3]);
        assert_eq!(&s[2..10], &0x1122_3344_5566u64.to_le_bytes());
        assert_eq!(&s[10..], &[0x0f, 0x0b]);
        let h = store_al_stub(0xabcd);
        assert_eq!(h[0], 0xa2);
        assert_eq!(&h[1..9], &0xabcdu64.to_le_bytes());
        assert_eq!(&h[9..11], &[0x0f, 0x0b]);
    }

    #[test]
    fn error_code_vectors_follow_the_sdm_table() {
        let with: Vec<u8> = (0..32).filter(|&v| has_error_code(v)).collect();
        assert_eq!(with, vec![8, 10, 11, 12, 13, 14, 17, 21, 29, 30]);
    }
}
