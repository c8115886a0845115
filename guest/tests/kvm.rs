use std::sync::Arc;

use guest::{ProcessImage, Vm, VmConfig, VcpuConfig};

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
