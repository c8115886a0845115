//! The `ix` row of the echo benchmark: our dataplane (libix echo server and
//! client over a memif wire) run with the same [`EchoParams`] as the Linux
//! baseline in [`super::linux_echo`].
//!
//! This is the seam where the dataplane's echo apps plug in. They have not
//! landed yet, so [`run_ix_echo`] reports that honestly instead of producing
//! numbers; `ixctl bench echo` prints the row as not run.

use super::report::EchoResult;
use super::EchoParams;

/// Why the ix echo benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum IxEchoError {
    /// The dataplane echo apps are not part of this build yet.
    #[error("ix echo not built yet: the libix echo apps have not landed; run `ixctl bench echo --system linux` for the baseline alone")]
    NotBuilt,
}

/// Runs the echo benchmark on our dataplane and returns its statistics.
///
/// Fails with [`IxEchoError::NotBuilt`] until the dataplane's echo apps exist.
pub fn run_ix_echo(params: &EchoParams) -> anyhow::Result<EchoResult> {
    log::debug!("ix echo requested with {params:?}");
    Err(IxEchoError::NotBuilt.into())
}
