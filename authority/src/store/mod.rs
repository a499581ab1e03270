//! openraft storage: the log store (segment files, with its vote and purge point in redb) and
//! the state machine store (redb).

mod log;
pub(crate) mod segments;
mod sm;

use std::path::Path;

pub use self::log::LogStore;
pub use self::sm::{SnapshotBuilder, StateMachineStore};
use crate::state::StateError;

/// Opens both stores of one node under `dir`: `log.redb` and `log/` (the segments),
/// `state.redb` and `snapshots/`.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), StateError> {
    crate::private_fs::create_dir(dir)
        .map_err(|e| StateError::Storage(format!("{}: {e}", dir.display())))?;
    let log = LogStore::open(dir)?;
    let sm = StateMachineStore::open(&dir.join("state.redb"), &dir.join("snapshots"))?;
    for f in ["log.redb", "state.redb"] {
        crate::private_fs::restrict_file(&dir.join(f))
            .map_err(|e| StateError::Storage(format!("{}: {e}", dir.join(f).display())))?;
    }
    Ok((log, sm))
}
