//! ixcpd's books on disk, so that a restarted ixcpd knows the dataplanes
//! that kept running while it was down.
//!
//! # The file
//!
//! `<socket>.state` (beside the API socket: `/run/ix/ixcpd.sock.state`),
//! JSON, mode 0600, rewritten whenever the books change: written to
//! `<socket>.state.tmp`, flushed to disk, renamed over the old file, and
//! the directory flushed, so that a crash at any moment leaves either the
//! old books or the new ones, never half of each.
//!
//! ```json
//! {"version":1,"boot_id":"6f1c…","ixcpd_pid":812,"dataplanes":[
//!   {"allocation":{"name":"echo","port":"wire0","cpus":[0],…},
//!    "owner_uid":0,"since_unix_ms":1764000000000,"huge":false,
//!    "holder":{"pid":4242,"start":987654},
//!    "launched":{"pid":4242,"start":987654}}]}
//! ```
//!
//! `holder` is the process that registered (the lifeline's other end),
//! `launched` the program ixcpd started for the dataplane; each is named
//! by pid and start time ([`ProcessId`]) so that a pid reused by another
//! process is not mistaken for the dataplane. The boot id makes start
//! times from before a reboot mean nothing.
//!
//! # Trust
//!
//! The file decides which cores and ports ixcpd believes taken, and which
//! processes it signals, so it is read only if it is a regular file owned
//! by ixcpd's user and writable by no one else; anything else is refused
//! ([`StateError::Untrusted`]). The log files of launched programs are not
//! named in it: their paths follow from the dataplane's name.
//!
//! # When it cannot be read
//!
//! A file that is not valid JSON, of another version, or untrusted stops
//! ixcpd from starting ([`StateError`]): starting with empty books while
//! the dataplanes it listed may still run would hand their cores and
//! ports out twice. The error says what is wrong and that moving the
//! file away starts ixcpd with empty books — after the operator made sure
//! those dataplanes are gone.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::process::ProcessId;
use crate::resources::Allocation;
use crate::sys;

/// The state file format this ixcpd writes and reads.
pub const STATE_VERSION: u32 = 1;
/// Largest state file read.
pub const MAX_STATE_BYTES: u64 = 16 << 20;

/// Where ixcpd keeps its files: beside the API socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Files {
    /// The state file, `<socket>.state`.
    pub state: PathBuf,
    /// Launched programs' output, `<socket>.logs/NAME.stdout|stderr`.
    pub logs: PathBuf,
}

impl Files {
    /// The files of the daemon whose API socket is `socket`.
    pub fn beside(socket: &Path) -> Files {
        let with = |suffix: &str| {
            let mut name = socket.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        };
        Files {
            state: with(".state"),
            logs: with(".logs"),
        }
    }
}

/// The books as written to disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// The boot the start times belong to.
    pub boot_id: String,
    /// The ixcpd that wrote the file.
    pub ixcpd_pid: u32,
    /// Every dataplane.
    pub dataplanes: Vec<SavedDataplane>,
}

/// One dataplane in the state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedDataplane {
    /// What it holds.
    pub allocation: Allocation,
    /// The uid that allocated it.
    pub owner_uid: u32,
    /// When it was allocated, ms since the Unix epoch.
    pub since_unix_ms: u64,
    /// Whether its pools are hugepages.
    pub huge: bool,
    /// The process that registered, if one did.
    #[serde(default)]
    pub holder: Option<ProcessId>,
    /// The program ixcpd launched for it, if any.
    #[serde(default)]
    pub launched: Option<ProcessId>,
    /// Its core policy (absent in files of ixcpds before the load
    /// policy: the config's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::config::Policy>,
}

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading it failed.
    #[error("cannot read the state file {path:?}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Not a file ixcpd wrote, by ownership or mode.
    #[error(
        "state file {path:?} is {why}; ixcpd reads only a regular file of its own user \
         (uid {uid}) that no one else may write: fix it, or move it away to start with empty books"
    )]
    Untrusted {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
        /// ixcpd's uid.
        uid: u32,
    },
    /// Not readable as books.
    #[error(
        "state file {path:?} is corrupt ({reason}); the dataplanes it listed may still run: \
         stop them, then move the file away to start with empty books"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// Written by another version of ixcpd.
    #[error(
        "state file {path:?} is version {version}, this ixcpd reads {STATE_VERSION}; stop its \
         dataplanes with the ixcpd that wrote it, or move the file away"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        version: u32,
    },
    /// A running dataplane's holdings do not fit this config.
    #[error(
        "state file {path:?}: dataplane {name} (pid {pid}) still runs but {reason}; restore the \
         config it was allocated under, or stop it (kill {pid}) and start ixcpd again"
    )]
    Conflict {
        /// The file.
        path: PathBuf,
        /// The dataplane.
        name: String,
        /// Its process.
        pid: u32,
        /// What does not fit.
        reason: String,
    },
}

/// Reads the state file at `path`: `None` when there is none.
pub fn load(path: &Path) -> Result<Option<Saved>, StateError> {
    let read_err = |source| StateError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(read_err(err)),
    };
    let meta = file.metadata().map_err(read_err)?;
    let uid = sys::euid();
    let untrusted = |why: String| StateError::Untrusted {
        path: path.to_owned(),
        why,
        uid,
    };
    if !meta.is_file() {
        return Err(untrusted("not a regular file".into()));
    }
    if meta.uid() != uid {
        return Err(untrusted(format!("owned by uid {}", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(untrusted(format!(
            "writable by others (mode {:04o})",
            meta.mode() & 0o7777
        )));
    }
    let mut bytes = Vec::new();
    Read::by_ref(&mut file)
        .take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(StateError::Corrupt {
            path: path.to_owned(),
            reason: format!("larger than {MAX_STATE_BYTES} bytes"),
        });
    }
    decode(path, &bytes).map(Some)
}

/// Parses the bytes of a state file.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Saved, StateError> {
    let corrupt = |reason: String| StateError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    // The version first, so that another format says so rather than
    // failing on a field this one lacks.
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(STATE_VERSION) => {}
        Some(v) => {
            return Err(StateError::Version {
                path: path.to_owned(),
                version: u32::try_from(v).unwrap_or(u32::MAX),
            })
        }
        None => return Err(corrupt("no `version` number".into())),
    }
    serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))
}

/// Encodes the books.
pub fn encode(saved: &Saved) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(saved).expect("the books always serialise");
    bytes.push(b'\n');
    bytes
}

/// Replaces the file at `path` with `bytes`, atomically: a temporary
/// file beside it, flushed, renamed over it, and the directory flushed.
pub fn save(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::FLOW_GROUPS;
    use std::os::unix::fs::PermissionsExt;

    fn saved() -> Saved {
        Saved {
            version: STATE_VERSION,
            boot_id: "b00t".into(),
            ixcpd_pid: 812,
            dataplanes: vec![SavedDataplane {
                allocation: Allocation {
                    name: "echo".into(),
                    port: "wire0".into(),
                    cpus: vec![0],
                    buffers_per_core: 512,
                    pool_bytes: 512 * 2176,
                    page_size: 4096,
                    huge: false,
                    reta: vec![0; FLOW_GROUPS],
                },
                owner_uid: 0,
                since_unix_ms: 1,
                huge: false,
                holder: Some(ProcessId {
                    pid: 4242,
                    start: 987_654,
                }),
                launched: None,
                policy: Some(crate::config::Policy::Load),
            }],
        }
    }

    #[test]
    fn files_sit_beside_the_socket() {
        let files = Files::beside(Path::new("/run/ix/ixcpd.sock"));
        assert_eq!(files.state, Path::new("/run/ix/ixcpd.sock.state"));
        assert_eq!(files.logs, Path::new("/run/ix/ixcpd.sock.logs"));
    }

    #[test]
    fn books_round_trip_through_the_file_and_replace_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ixcpd.sock.state");
        assert_eq!(load(&path).unwrap(), None);
        save(&path, &encode(&saved())).unwrap();
        assert_eq!(load(&path).unwrap(), Some(saved()));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mut empty = saved();
        empty.dataplanes.clear();
        save(&path, &encode(&empty)).unwrap();
        assert_eq!(load(&path).unwrap(), Some(empty));
        assert!(!dir.path().join("ixcpd.sock.state.tmp").exists());
    }

    #[test]
    fn corrupt_and_foreign_files_are_refused_with_what_to_do() {
        let path = Path::new("/run/ix/x.state");
        let good = encode(&saved());
        // Every truncation of a good file is refused, none panics.
        for cut in 0..good.len() - 1 {
            let err = decode(path, &good[..cut]).unwrap_err();
            assert!(matches!(err, StateError::Corrupt { .. }), "{cut}: {err}");
        }
        let err = decode(path, b"\xff\xfe garbage").unwrap_err();
        assert!(err.to_string().contains("move the file away"), "{err}");
        let err = decode(path, br#"{"version":2,"anything":true}"#).unwrap_err();
        assert!(
            matches!(err, StateError::Version { version: 2, .. }),
            "{err}"
        );
        let err = decode(path, br#"{"dataplanes":[]}"#).unwrap_err();
        assert!(err.to_string().contains("no `version`"), "{err}");
        let mut text = String::from_utf8(good).unwrap();
        text = text.replace("\"cpus\":[0]", "\"cpus\":\"zero\"");
        let err = decode(path, text.as_bytes()).unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn a_file_others_may_write_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.state");
        save(&path, &encode(&saved())).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, StateError::Untrusted { .. }), "{err}");
        assert!(
            err.to_string().contains("writable by others (mode 0666)"),
            "{err}"
        );
        let err = load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        if sys::euid() == 0 {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            let err = load(&path).unwrap_err();
            assert!(err.to_string().contains("owned by uid 65534"), "{err}");
        } else {
            eprintln!("SKIPPED: the foreign-owner case needs root to chown");
        }
    }
}
