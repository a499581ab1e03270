//! The task supervisor through the crate's public surface.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use ringzero_agent::{
    AllocId, RestartMode, RestartPolicy, Supervisor, SupervisorConfig, TaskSpec, TaskState,
};

#[tokio::test]
async fn a_task_runs_logs_and_ends() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SupervisorConfig::new(dir.path().join("tasks"));
    config.spiffe_endpoint_socket = Some("unix:///run/ringzero/agent.sock".into());
    let supervisor = Supervisor::new(config).unwrap();
    let alloc = AllocId::new("hello-1").unwrap();
    let spec = TaskSpec {
        alloc_id: alloc.clone(),
        command: "/bin/sh".into(),
        args: vec![
            "-c".into(),
            "echo \"hello $WHO via $SPIFFE_ENDPOINT_SOCKET\"; exit 4".into(),
        ],
        env: BTreeMap::from([("WHO".into(), "world".into())]),
        workdir: None,
        uid: ringzero_agent::current_uid(),
        gid: rustix::process::getgid().as_raw(),
        cpu_millis: None,
        memory_mb: None,
        restart: RestartPolicy {
            mode: RestartMode::Never,
            max_restarts: 0,
            backoff: Duration::from_secs(1),
        },
    };
    let mut statuses = supervisor.statuses();
    supervisor.start(spec).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let done = statuses
                .borrow_and_update()
                .get("hello-1")
                .filter(|s| s.state.is_final())
                .cloned();
            if let Some(status) = done {
                return status;
            }
            statuses.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    assert_eq!(status.state, TaskState::Exited { code: Some(4) });
    let (stdout, _) = supervisor.log_paths(&alloc);
    assert_eq!(
        std::fs::read_to_string(stdout).unwrap(),
        "hello world via unix:///run/ringzero/agent.sock\n"
    );
}
