//! openraft's own conformance suite against the redb stores.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use ringzero_authority::store::{self, LogStore, StateMachineStore};
use ringzero_authority::{NodeId, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) = store::open(dir.path()).expect("open stores");
        Ok((dir, log, sm))
    }
}

#[test]
fn redb_stores_pass_the_openraft_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}
