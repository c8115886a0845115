//! KVM isolation runtime (placeholder docs, expanded below).

pub mod fault;
pub mod paging;
pub mod region;
pub mod runtime;
mod sys;
pub mod syscall;
pub mod vcpu;
pub mod vm;
pub mod x86;

pub use fault::{FaultKind, FaultReport, Touch};
pub use paging::Perms;
pub use region::{Access, ProcessImage, Region, RegionError};
pub use runtime::{GuestRuntime, GuestThread, RuntimeConfig, RuntimeError};
pub use syscall::{SyscallPolicy, SyscallStats};
pub use vcpu::{RunError, Vcpu, VcpuConfig, VcpuError, VcpuStats, VcpuTimings};
pub use vm::{Vm, VmConfig, VmError};
