use std::sync::Arc;

use guest::{ProcessImage, Vm, VmConfig, VcpuConfig};
use vm_memory::VolatileMemory;

fn kvm() -> bool {
    if Vm::available() {
        true
    } else {
        eprintln!("SKIPPED: /dev/kvm not available");
        false
    }
}

fn image_vm() -> Arc<Vm> {
    let vm = Vm::new(VmConfig::default()).unwrap();
    let img = ProcessImage::current().unwrap();
    vm.map_all(img.code_and_rodata).unwrap();
    vm
}

extern "C" fn add_one(x: u64) -> u64 {
    x.wrapping_add(1)
}

#[test]
fn call_returns_the_functions_value() {
    if !kvm() {
        return;
    }
    let vm = image_vm();
    let mut vcpu = vm.create_vcpu(VcpuConfig::default()).unwrap();
    let r = unsafe { vcpu.call(add_one, 41) };
    eprintln!("{r:?} {:?}", vcpu.stats());
    assert_eq!(r.unwrap(), 42);
}

fn pages(n: usize) -> vm_memory::MmapRegion {
    vm_memory::MmapRegion::new(n * 4096).unwrap()
}

extern "C" fn read_u64(addr: u64) -> u64 {
    unsafe { std::ptr::read_volatile(addr as *const u64) }
}

extern "C" fn write_u64(addr: u64) -> u64 {
    unsafe { std::ptr::write_volatile(addr as *mut u64, 0xdead) };
    1
}

#[test]
fn probe_faults() {
    if !kvm() {
        return;
    }
    let vm = image_vm();
    let rx = pages(4);
    vm.map(guest::Region::from_ptr("rx pool", rx.as_ptr(), rx.len(), guest::Access::ReadOnly).unwrap()).unwrap();
    let secret = Box::new([0x5au8; 4096]);
    let mut vcpu = vm.create_vcpu(VcpuConfig::default()).unwrap();
    let r = unsafe { vcpu.call(read_u64, secret.as_ptr() as u64) };
    eprintln!("secret: {r:?}");
    let r = unsafe { vcpu.call(read_u64, rx.as_ptr() as u64 + 8) };
    eprintln!("rx read: {r:?}");
    let r = unsafe { vcpu.call(write_u64, rx.as_ptr() as u64 + 8) };
    eprintln!("rx write: {r:?}");
    let r = unsafe { vcpu.call(add_one, 1) };
    eprintln!("after: {r:?}");
    let r = unsafe { vcpu.call(std::mem::transmute::<*const u8, extern "C" fn(u64) -> u64>(rx.as_ptr()), 1) };
    eprintln!("exec: {r:?}");
}

extern "C" fn do_write(fd: u64) -> u64 {
    let msg = b"hello from the guest\n";
    unsafe { libc::write(fd as i32, msg.as_ptr().cast(), msg.len()) as u64 }
}

extern "C" fn do_open(_: u64) -> u64 {
    let path = c"/etc/hostname";
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
    if fd >= 0 { return fd as u64 }
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as u64 | 1 << 32
}

#[test]
fn probe_syscalls() {
    if !kvm() {
        return;
    }
    let vm = image_vm();
    vm.map_all(ProcessImage::current().unwrap().data).unwrap();
    let mut vcpu = vm.create_vcpu(VcpuConfig::default()).unwrap();
    let r = unsafe { vcpu.call(do_write, 2) };
    eprintln!("write: {r:?}");
    eprintln!("write: {r:?}");
    let r = unsafe { vcpu.call(do_open, 0) };
    eprintln!("open: {r:?} {:?}", vcpu.stats());
}
