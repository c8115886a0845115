//! Smoke test of `ixctl bench kvs`: the quick sweep on every system, its
//! JSON shape, and the CSV and plot it writes. Speed is not asserted (a
//! test machine is noisy); that every system ran and answered is.

use std::process::Command;

#[test]
fn quick_kvs_benchmark_runs_every_system_and_writes_csv_and_plot() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_ixctl"))
        .args(["bench", "kvs", "--quick", "--json", "--out"])
        .arg(out.path())
        .output()
        .expect("ixctl runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    let have_memcached = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("memcached").is_file()))
        .unwrap_or(false);
    if !have_memcached {
        eprintln!(
            "SKIPPED (memcached row): memcached not installed (scripts/setup.sh installs it)"
        );
    }
    let json: serde_json::Value = serde_json::from_slice(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}); stderr:\n{stderr}"));
    for system in ["ix", "linux", "memcached"] {
        let entry = &json[system];
        assert!(entry.is_object(), "no {system} entry: {json}");
        if system == "memcached" && !have_memcached {
            assert!(entry["error"].is_string());
            continue;
        }
        assert!(
            entry.get("error").is_none(),
            "{system} did not run: {entry}; stderr:\n{stderr}"
        );
        for key in ["slo_rps", "p50_us", "p99_us"] {
            assert!(entry.get(key).is_some(), "{system} lacks {key}: {entry}");
        }
    }
    for key in ["ratio_linux", "ratio_memcached", "common_rps"] {
        assert!(json.get(key).is_some(), "no {key}: {json}");
    }
    assert_eq!(json["workload"], "etc");
    if have_memcached {
        assert!(
            run.status.success(),
            "exit {:?}; stderr:\n{stderr}",
            run.status
        );
    }

    let csv = std::fs::read_to_string(out.path().join("kvs-etc.csv")).expect("CSV written");
    let mut lines = csv.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("system,phase,offered_rps"));
    for system in ["ix", "linux"] {
        let answered = csv
            .lines()
            .filter(|l| l.starts_with(&format!("{system},sweep,")))
            .filter_map(|l| l.split(',').nth(3)?.parse::<f64>().ok())
            .any(|achieved| achieved > 0.0);
        assert!(answered, "{system}: no sweep point with replies in\n{csv}");
    }
    let svg = std::fs::read_to_string(out.path().join("kvs-etc.svg")).expect("plot written");
    assert!(svg.starts_with("<svg") && svg.contains("p99 latency"));
}
