#![allow(clippy::unwrap_used)]
use super::*;

pub(crate) fn audit() -> AuditRecord {
    AuditRecord {
        actor: "spiffe://td/user/admin".into(),
        revocation_ids: vec!["ab".into()],
        operation: "node:enroll".into(),
        resource: "node/n1".into(),
        decision: AuditDecision::Allow,
        reason: None,
        authority: 1,
        request_id: "r1".into(),
        details: vec![],
    }
}

#[test]
fn batches_round_trip_and_read_single_commands() {
    let c = |n: u8| Command {
        id: CommandId([n; 16]),
        time_ms: u64::from(n),
        audit: audit(),
        op: Op::AuditOnly,
    };
    let b = Batch::new(vec![c(1), c(2), c(3)]);
    let bytes = b.encode();
    assert_eq!(bytes[0], BATCH_VERSION);
    assert_eq!(Batch::decode(&bytes).unwrap(), b);
    // An entry written before batching (version 1) is a batch of one.
    assert_eq!(Batch::decode(&c(9).encode()).unwrap(), Batch::one(c(9)));
    assert!(Batch::decode(&[]).is_err());
    assert!(Batch::decode(&[3, 0]).is_err());
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(Batch::decode(&trailing).is_err());
    assert!(Batch::decode(&bytes[..bytes.len() - 1]).is_err());
    let huge = Batch::new((0..=MAX_BATCH).map(|i| c(i as u8)).collect()).encode();
    assert!(Batch::decode(&huge).is_err());
}

#[test]
fn encoding_round_trips_and_is_versioned() {
    let c = Command {
        id: CommandId([7; 16]),
        time_ms: 42,
        audit: audit(),
        op: Op::SetNodeStatus {
            name: "n1".into(),
            status: NodeStatus::Banned,
        },
    };
    let bytes = c.encode();
    assert_eq!(bytes[0], COMMAND_VERSION);
    assert_eq!(Command::decode(&bytes).unwrap(), c);
    // Through serde (as openraft stores it) too.
    let via = postcard::to_stdvec(&c).unwrap();
    assert_eq!(postcard::from_bytes::<Command>(&via).unwrap(), c);
    let mut future = bytes.clone();
    future[0] = 99;
    assert!(Command::decode(&future).is_err());
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(Command::decode(&trailing).is_err());
    assert!(Command::decode(&[]).is_err());
    assert!(Command::decode(&bytes[..bytes.len() - 1]).is_err());
}

#[test]
fn validation_refuses_bad_commands() {
    let mk = |op| Command {
        id: CommandId([0; 16]),
        time_ms: 0,
        audit: audit(),
        op,
    };
    assert!(
        mk(Op::SetNodeStatus {
            name: "a/b".into(),
            status: NodeStatus::Active
        })
        .validate()
        .is_err()
    );
    assert!(
        mk(Op::Revoke {
            ids: vec![],
            expires_ms: 0
        })
        .validate()
        .is_err()
    );
    let entry = RegistrationEntry {
        id: "e1".into(),
        spiffe_id: "spiffe://td/ns/a/web".into(),
        parent: "n1".into(),
        selectors: vec!["unix:uid:1000".into()],
        ttl_s: 3600,
        dns_names: vec![],
        revision: 0,
    };
    assert!(
        mk(Op::PutEntry {
            entry: entry.clone()
        })
        .validate()
        .is_ok()
    );
    let bad = RegistrationEntry {
        spiffe_id: "http://x".into(),
        ..entry.clone()
    };
    assert!(mk(Op::PutEntry { entry: bad }).validate().is_err());
    let bad = RegistrationEntry {
        selectors: vec![],
        ..entry
    };
    assert!(mk(Op::PutEntry { entry: bad }).validate().is_err());
    let role = RoleDef {
        name: "ci".into(),
        rights: vec![("logs:write".into(), "ns".into())],
    };
    assert!(mk(Op::PutRole { role }).validate().is_err());
}

#[test]
fn mesh_policies_protect_namespaces_only() {
    let p = |to: &str, from: &str| MeshPolicy {
        to: to.into(),
        from: from.into(),
    };
    for (to, from, resource) in [
        (
            "spiffe://td/ns/shop/db",
            "spiffe://td/ns/shop/web",
            "ns/shop/db",
        ),
        ("spiffe://td/ns/shop/*", "spiffe://td/ns/shop/*", "ns/shop"),
        ("spiffe://td/ns/*", "spiffe://td/*", "ns"),
        (
            "spiffe://td/ns/shop/db",
            "spiffe://td/user/alice",
            "ns/shop/db",
        ),
    ] {
        let policy = p(to, from);
        assert!(policy.validate().is_ok(), "{to} {from}");
        assert_eq!(policy.resource().unwrap().as_str(), resource);
    }
    for (to, from) in [
        // Reserved, outside ns/, or the whole trust domain as `to`.
        ("spiffe://td/ringzero/authority/1", "spiffe://td/ns/a/b"),
        ("spiffe://td/ringzero/*", "spiffe://td/ns/a/b"),
        ("spiffe://td/user/alice", "spiffe://td/ns/a/b"),
        ("spiffe://td/other/x", "spiffe://td/ns/a/b"),
        ("spiffe://td/*", "spiffe://td/ns/a/b"),
        ("spiffe://td/ns", "spiffe://td/ns/a/b"),
        ("spiffe://td", "spiffe://td/ns/a/b"),
        // Another trust domain, a bare trust domain as `from`, not patterns at all.
        ("spiffe://td/ns/a/b", "spiffe://other/ns/a/b"),
        ("spiffe://td/ns/a/b", "spiffe://td"),
        ("spiffe://td/ns/a/b", "ns/a/b"),
        ("spiffe://td/ns/a/../b", "spiffe://td/ns/a/b"),
        ("spiffe://td/ns/a/b/", "spiffe://td/ns/a/b"),
        ("spiffe://TD/ns/a/b", "spiffe://td/ns/a/b"),
    ] {
        let policy = p(to, from);
        assert!(policy.validate().is_err(), "{to} {from}");
        let cmd = Command {
            id: CommandId([7; 16]),
            time_ms: 1,
            audit: audit(),
            op: Op::PutMeshPolicy { policy },
        };
        assert!(cmd.validate().is_err(), "{to} {from}");
    }
}

#[test]
fn job_commands_round_trip_and_are_validated() {
    let job = Job {
        namespace: "shop".into(),
        name: "web".into(),
        command: "/usr/bin/web".into(),
        args: vec!["--port".into(), "8080".into()],
        env: [("A".to_owned(), "1".to_owned())].into(),
        workdir: Some("/srv".into()),
        uid: 1000,
        gid: 1000,
        count: 2,
        cpu_millis: Some(250),
        memory_mb: None,
        constraints: Constraints {
            nodes: vec!["n1".into()],
            labels: [("zone".to_owned(), "a".to_owned())].into(),
        },
        restart: Restart {
            policy: RestartPolicy::Always,
            max_restarts: 3,
            backoff_ms: 500,
        },
        spiffe_id: "spiffe://td/ns/shop/web".into(),
    };
    let mk = |op| Command {
        id: CommandId([5; 16]),
        time_ms: 9,
        audit: audit(),
        op,
    };
    for op in [
        Op::PutJob { job: job.clone() },
        Op::StopJob {
            namespace: "shop".into(),
            name: "web".into(),
        },
        Op::PurgeJob {
            namespace: "shop".into(),
            name: "web".into(),
        },
    ] {
        let c = mk(op);
        c.validate().unwrap();
        assert_eq!(Command::decode(&c.encode()).unwrap(), c);
    }
    let mut reserved = job.clone();
    reserved.spiffe_id = "spiffe://td/ringzero/node/n1".into();
    assert!(mk(Op::PutJob { job: reserved }).validate().is_err());
    assert!(
        mk(Op::StopJob {
            namespace: "shop/x".into(),
            name: "web".into(),
        })
        .validate()
        .is_err()
    );
    assert!(
        mk(Op::PurgeJob {
            namespace: "shop".into(),
            name: String::new(),
        })
        .validate()
        .is_err()
    );
}

#[test]
fn command_ids_sort_by_time_and_differ_within_a_millisecond() {
    let first = CommandId::fresh();
    let same_ms: Vec<CommandId> = (0..1000).map(|_| CommandId::fresh()).collect();
    let unique: std::collections::HashSet<_> = same_ms.iter().collect();
    assert_eq!(unique.len(), same_ms.len(), "ids made together differ");
    std::thread::sleep(std::time::Duration::from_millis(3));
    let later = CommandId::fresh();
    assert!(later > first, "{later:?} was made after {first:?}");
    assert!(same_ms.iter().all(|id| *id < later));
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut prefix = [0u8; 8];
    prefix[2..].copy_from_slice(&later.0[..6]);
    assert!(
        ms - u64::from_be_bytes(prefix) < 10_000,
        "the prefix is the clock"
    );
}
