//! End-to-end checks of the `ixctl` binary: exit codes, one-line errors,
//! help, the report of both systems, and a closed stdout.

use std::process::{Command, Stdio};

fn ixctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ixctl"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("running ixctl")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("ixctl prints UTF-8")
}

/// A short Linux-only run: enough to produce a report.
const QUICK_LINUX: &[&str] = &[
    "bench",
    "echo",
    "--system",
    "linux",
    "--duration",
    "0.3",
    "--warmup",
    "0",
    "--connections",
    "2",
];

#[test]
fn usage_error_exits_2_with_one_line_on_stderr() {
    let out = ixctl(&["bench", "echo", "--connections", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert_eq!(
        text(&out.stderr),
        "ixctl: --connections must be between 1 and 10000, got 0\n"
    );

    let out = ixctl(&["bench", "echo", "--no-such-option"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("ixctl: unexpected argument '--no-such-option'"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn missing_subcommand_exits_2_and_shows_help_on_stderr() {
    let out = ixctl(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("Usage: ixctl [OPTIONS] <COMMAND>"));
}

#[test]
fn help_exits_0_on_stdout_with_an_example() {
    let out = ixctl(&["bench", "echo", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    assert!(
        help.contains("Examples:") && help.contains("ixctl bench echo --system linux"),
        "{help}"
    );
    assert!(
        help.contains("Exit status: 0 success, 1 runtime failure"),
        "{help}"
    );
}

#[test]
fn linux_only_json_run_exits_0_with_numbers() {
    let mut args = QUICK_LINUX.to_vec();
    args.push("--json");
    let out = ixctl(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert!(v["linux"]["rps"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["linux"]["errors"].as_u64(), Some(0), "{v}");
    assert!(v["ratio_rps"].is_null());
}

#[test]
fn both_rows_run_and_json_has_the_documented_shape() {
    let args: Vec<&str> = QUICK_LINUX
        .iter()
        .map(|&a| if a == "linux" { "ix,linux" } else { a })
        .chain(["--json"])
        .collect();
    let out = ixctl(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    for system in ["ix", "linux"] {
        for key in ["rps", "p50_us", "p99_us"] {
            assert!(
                v[system][key].as_f64().unwrap() > 0.0,
                "{system}.{key}: {v}"
            );
        }
        assert_eq!(v[system]["errors"].as_u64(), Some(0), "{v}");
    }
    let ratio = v["ratio_rps"].as_f64().expect("ratio_rps is a number");
    let want = v["ix"]["rps"].as_f64().unwrap() / v["linux"]["rps"].as_f64().unwrap();
    assert!((ratio - want).abs() < 1e-6 * want, "{v}");
}

#[test]
fn closed_stdout_exits_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ixctl"))
        .args(QUICK_LINUX)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running ixctl");
    // Close the read end before ixctl writes its report.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("waiting for ixctl");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stderr), "");
}
