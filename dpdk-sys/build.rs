//! Build script of dpdk-sys.
//!
//! Without the `link` feature it does nothing (the crate is empty), so the
//! workspace builds where DPDK is not installed. With it: find DPDK ≥ 22.11
//! through pkg-config (`libdpdk`), compile the C shim (`src/shim.c`) with
//! DPDK's compiler flags, generate Rust declarations for an allow-listed
//! part of the EAL, ethdev, mbuf and mempool APIs and for the shim with
//! bindgen, and link the few DPDK libraries those need. Anything missing
//! ends the build with one message saying what to install.

#[cfg(not(feature = "link"))]
fn main() {}

#[cfg(feature = "link")]
fn main() {
    if let Err(msg) = native::build() {
        eprintln!("error: dpdk-sys: {msg}");
        std::process::exit(1);
    }
}

#[cfg(feature = "link")]
mod native {
    use std::env;
    use std::path::PathBuf;
    use std::process::Command;

    /// The oldest DPDK whose API this crate is written against.
    const MIN_VERSION: &str = "22.11";

    /// What to do when a piece is missing (Debian/Ubuntu package names).
    const INSTALL: &str = "install DPDK >= 22.11 and clang: `apt-get install libdpdk-dev dpdk-dev \
         clang libclang-dev pkg-config` (or point PKG_CONFIG_PATH at a DPDK build's \
         lib/pkgconfig), or build without the `dpdk` feature";

    /// DPDK libraries the bindings and the shim use. The rest of what
    /// `pkg-config --libs libdpdk` lists (graph, pipeline, crypto, …) is
    /// not linked; the poll-mode drivers are loaded by the EAL as plugins.
    const LIBS: [&str; 6] = [
        "rte_ethdev",
        "rte_mbuf",
        "rte_mempool",
        "rte_ring",
        "rte_eal",
        "rte_kvargs",
    ];

    pub fn build() -> Result<(), String> {
        println!("cargo:rerun-if-changed=build.rs");
        println!("cargo:rerun-if-changed=src/shim.h");
        println!("cargo:rerun-if-changed=src/shim.c");
        for var in [
            "PKG_CONFIG",
            "PKG_CONFIG_PATH",
            "PKG_CONFIG_LIBDIR",
            "LIBCLANG_PATH",
        ] {
            println!("cargo:rerun-if-env-changed={var}");
        }

        let lib = pkg_config::Config::new()
            .atleast_version(MIN_VERSION)
            .cargo_metadata(false)
            .env_metadata(false)
            .probe("libdpdk")
            .map_err(|e| match e {
                pkg_config::Error::Failure { .. } | pkg_config::Error::ProbeFailure { .. } => {
                    format!("DPDK >= {MIN_VERSION} not found by pkg-config (libdpdk): {INSTALL}")
                }
                other => format!("pkg-config could not be run ({other}): {INSTALL}"),
            })?;
        let cflags = raw_cflags()?;

        let mut shim = cc::Build::new();
        shim.file("src/shim.c").warnings(true).opt_level(2);
        for flag in &cflags {
            shim.flag(flag);
        }
        shim.try_compile("ix_dpdk_shim")
            .map_err(|e| format!("the C shim did not compile ({e}): {INSTALL}"))?;

        for dir in &lib.link_paths {
            println!("cargo:rustc-link-search=native={}", dir.display());
        }
        for name in LIBS {
            if !lib.libs.iter().any(|l| l == name) {
                return Err(format!(
                    "DPDK {} has no library {name} in `pkg-config --libs libdpdk`: {INSTALL}",
                    lib.version
                ));
            }
            println!("cargo:rustc-link-lib=dylib={name}");
        }
        println!("cargo:version={}", lib.version);

        let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
        bindings(&cflags)?
            .write_to_file(out.join("bindings.rs"))
            .map_err(|e| format!("cannot write the bindings: {e}"))?;
        Ok(())
    }

    /// `pkg-config --cflags libdpdk`, whole: besides include paths it holds
    /// `-include rte_config.h` and an `-march` the inline functions need.
    fn raw_cflags() -> Result<Vec<String>, String> {
        let pkg_config = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".into());
        let out = Command::new(&pkg_config)
            .args(["--cflags", "libdpdk"])
            .output()
            .map_err(|e| format!("cannot run {pkg_config}: {e}: {INSTALL}"))?;
        if !out.status.success() {
            return Err(format!(
                "`{pkg_config} --cflags libdpdk` failed: {}: {INSTALL}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // `-include rte_config.h` is two words that must stay together.
        Ok(text.split_whitespace().map(str::to_owned).collect())
    }

    fn bindings(cflags: &[String]) -> Result<bindgen::Bindings, String> {
        if !clang_available() {
            return Err(format!("libclang not found (bindgen needs it): {INSTALL}"));
        }
        let builder = bindgen::Builder::default()
            .header("src/shim.h")
            .clang_args(cflags)
            .clang_arg("-Isrc")
            .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
            .use_core()
            .prepend_enum_name(false)
            .derive_default(true)
            .generate_comments(false)
            .layout_tests(false)
            // Our shim: the static-inline fast path, rte_errno, constants.
            .allowlist_function("ix_rte_.*")
            // EAL: start-up, devices, threads, errors.
            .allowlist_function("rte_eal_init")
            .allowlist_function("rte_eal_cleanup")
            .allowlist_function("rte_eal_hotplug_remove")
            .allowlist_function("rte_dev_probe")
            .allowlist_function("rte_thread_register")
            .allowlist_function("rte_thread_unregister")
            .allowlist_function("rte_socket_id")
            .allowlist_function("rte_strerror")
            .allowlist_function("rte_version")
            // ethdev: configuration, queues, link, RSS, counters.
            .allowlist_function("rte_eth_dev_.*")
            .allowlist_function("rte_eth_rx_queue_setup")
            .allowlist_function("rte_eth_tx_queue_setup")
            .allowlist_function("rte_eth_link_get_nowait")
            .allowlist_function("rte_eth_promiscuous_enable")
            .allowlist_function("rte_eth_macaddr_get")
            .allowlist_function("rte_eth_stats_get")
            .allowlist_function("rte_eth_stats_reset")
            // mbuf and mempool.
            .allowlist_function("rte_pktmbuf_pool_create")
            .allowlist_function("rte_pktmbuf_free_bulk")
            .allowlist_function("rte_mempool_free")
            .allowlist_function("rte_mempool_avail_count")
            .allowlist_function("rte_mempool_in_use_count")
            .allowlist_var("RTE_ETH_.*")
            .allowlist_var("RTE_PKTMBUF_HEADROOM")
            .allowlist_var("RTE_MBUF_DEFAULT_.*")
            .allowlist_var("RTE_MAX_ETHPORTS")
            .allowlist_var("RTE_MAX_LCORE")
            .allowlist_var("RTE_ETHER_ADDR_LEN")
            .allowlist_var("SOCKET_ID_ANY")
            .allowlist_type("rte_eth_.*");
        builder
            .generate()
            .map_err(|e| format!("bindgen failed on the DPDK headers ({e}): {INSTALL}"))
    }

    /// Whether libclang can be loaded, asked before bindgen (which panics
    /// with a long message when it cannot).
    fn clang_available() -> bool {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let ok = std::panic::catch_unwind(|| {
            bindgen::Builder::default()
                .header_contents("probe.h", "int ix_probe;")
                .generate()
                .is_ok()
        })
        .unwrap_or(false);
        std::panic::set_hook(hook);
        ok
    }
}
