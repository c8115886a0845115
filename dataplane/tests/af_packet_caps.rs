//! Opening an AF_PACKET queue without `CAP_NET_RAW` fails with an error
//! that says what to do. The test re-runs itself under `setpriv` with
//! `CAP_NET_RAW` removed from the capability bounding set.

use std::process::Command;

use dataplane::buf::Pool;
use dataplane::nic::af_packet::{AfPacketConfig, AfPacketError, AfPacketPort};

/// Set in the child run, where `CAP_NET_RAW` is gone.
const CHILD_ENV: &str = "IX_AF_PACKET_CAPS_CHILD";

#[test]
fn open_without_cap_net_raw_names_the_fix() {
    if std::env::var_os(CHILD_ENV).is_some() {
        let pool = Pool::new(1, 8, false).unwrap();
        let err = AfPacketPort::open("lo", &AfPacketConfig::default(), pool).unwrap_err();
        assert!(
            matches!(err, AfPacketError::NeedsCapNetRaw { .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "interface lo: a packet socket needs CAP_NET_RAW — run as root"
        );
        return;
    }
    let setpriv_works = Command::new("setpriv")
        .args(["--bounding-set", "-net_raw", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !setpriv_works {
        eprintln!("SKIPPED: needs setpriv (util-linux) and root to drop CAP_NET_RAW");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("setpriv")
        .args(["--bounding-set", "-net_raw", "--inh-caps", "-net_raw"])
        .arg(&exe)
        .args([
            "--exact",
            "open_without_cap_net_raw_names_the_fix",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "the child ran the check"
    );
}
