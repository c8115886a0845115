//! What went wrong in the guest, as told to the operator (and, through the
//! control plane, to ixcpd): the exception, the address touched, how it was
//! touched, and which mapping — if any — the address and the instruction
//! lie in.

use std::fmt;

use crate::region::Region;
use crate::x86::{self, pf};

/// How the faulting access used the memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Touch {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Execute,
}

impl fmt::Display for Touch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Touch::Read => "read",
            Touch::Write => "write",
            Touch::Execute => "execute",
        })
    }
}

/// The cause of a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// A CPU exception delivered in the guest (vector, error code if the
    /// vector has one).
    Exception {
        /// Exception vector (14 = page fault).
        vector: u8,
        /// The error code the CPU pushed, if any.
        error_code: Option<u64>,
    },
    /// An access that the page tables allowed but no memory backs (an
    /// address the VMM reserved for exits, touched the wrong way).
    Unbacked,
    /// The vCPU shut down (triple fault): exception delivery itself failed.
    Shutdown,
}

/// A report of a fault that ended a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultReport {
    /// The cause.
    pub kind: FaultKind,
    /// The address touched (CR2 for a page fault; the exit address for an
    /// unbacked access), when known.
    pub address: Option<u64>,
    /// How it was touched, when known.
    pub touch: Option<Touch>,
    /// Instruction pointer of the faulting instruction.
    pub rip: u64,
    /// Stack pointer at the fault.
    pub rsp: u64,
    /// The mapping holding `address`, if any.
    pub region: Option<Region>,
    /// The mapping holding `rip`, if any.
    pub code_region: Option<Region>,
    /// The address lies in the unmapped guard page below the vCPU's stack.
    pub stack_overflow: bool,
}

impl FaultReport {
    /// The touch a page-fault error code describes.
    pub fn touch_from_pf_error(error: u64) -> Touch {
        if error & pf::FETCH != 0 {
            Touch::Execute
        } else if error & pf::WRITE != 0 {
            Touch::Write
        } else {
            Touch::Read
        }
    }
}

impl fmt::Display for FaultReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            FaultKind::Exception { vector, error_code } => {
                write!(f, "{}", x86::exception_name(vector))?;
                if let Some(e) = error_code {
                    write!(f, " (error code {e:#x})")?;
                }
            }
            FaultKind::Unbacked => f.write_str("access to an unbacked address")?,
            FaultKind::Shutdown => f.write_str("vCPU shutdown (triple fault)")?,
        }
        if let Some(addr) = self.address {
            match self.touch {
                Some(t) => write!(f, ": {t} of {addr:#x}")?,
                None => write!(f, ": address {addr:#x}")?,
            }
            match &self.region {
                Some(r) => write!(f, " in {r}")?,
                None if self.stack_overflow => {
                    f.write_str(" (guard page below the vCPU stack: stack overflow)")?
                }
                None => f.write_str(" (not mapped in the guest)")?,
            }
        }
        write!(f, " at rip {:#x}", self.rip)?;
        if let Some(r) = &self.code_region {
            write!(f, " in {}", r.name())?;
        }
        write!(f, ", rsp {:#x}", self.rsp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::Access;

    #[test]
    fn page_fault_error_codes_name_the_touch() {
        assert_eq!(FaultReport::touch_from_pf_error(pf::USER), Touch::Read);
        assert_eq!(
            FaultReport::touch_from_pf_error(pf::USER | pf::WRITE | pf::PRESENT),
            Touch::Write
        );
        assert_eq!(
            FaultReport::touch_from_pf_error(pf::USER | pf::FETCH | pf::PRESENT),
            Touch::Execute
        );
    }

    #[test]
    fn report_names_address_touch_and_mapping() {
        let rx = Region::new("rx pool", 0x7000_0000, 0x10000, Access::ReadOnly).unwrap();
        let report = FaultReport {
            kind: FaultKind::Exception {
                vector: 14,
                error_code: Some(pf::USER | pf::WRITE | pf::PRESENT),
            },
            address: Some(0x7000_0040),
            touch: Some(Touch::Write),
            rip: 0x5555_1234,
            rsp: 0x7ff0_0000,
            region: Some(rx),
            code_region: None,
            stack_overflow: false,
        };
        let text = report.to_string();
        assert!(text.starts_with("#PF page fault (error code 0x7): write of 0x70000040 in rx pool [0x70000000..0x70010000) read-only"), "{text}");
        assert!(
            text.ends_with("at rip 0x55551234, rsp 0x7ff00000"),
            "{text}"
        );
    }

    #[test]
    fn report_says_when_nothing_is_mapped_there() {
        let report = FaultReport {
            kind: FaultKind::Exception {
                vector: 14,
                error_code: Some(pf::USER),
            },
            address: Some(0x1000),
            touch: Some(Touch::Read),
            rip: 1,
            rsp: 2,
            region: None,
            code_region: None,
            stack_overflow: false,
        };
        assert!(report
            .to_string()
            .contains("read of 0x1000 (not mapped in the guest)"));
        let overflow = FaultReport {
            stack_overflow: true,
            ..report
        };
        assert!(overflow.to_string().contains("stack overflow"));
    }
}
