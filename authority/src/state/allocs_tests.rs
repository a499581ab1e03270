#![allow(clippy::unwrap_used)]

use super::super::apply::apply_command;
use super::super::create_tables;
use super::*;
use crate::command::{
    AuditDecision, AuditRecord, Command, CommandId, Constraints, Job, Op, Restart,
};

struct Db {
    _dir: tempfile::TempDir,
    db: redb::Database,
    index: u64,
}

impl Db {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("state.redb")).unwrap();
        create_tables(&db).unwrap();
        Db {
            _dir: dir,
            db,
            index: 0,
        }
    }

    fn run(&mut self, op: Op) -> Outcome {
        self.index += 1;
        let cmd = Command {
            id: CommandId::random(),
            time_ms: self.index * 10,
            audit: AuditRecord {
                actor: "spiffe://td/user/sched".into(),
                revocation_ids: vec![],
                operation: "job:launch".into(),
                resource: "ns/shop/web".into(),
                decision: AuditDecision::Allow,
                reason: None,
                authority: 1,
                request_id: "r".into(),
                details: vec![],
            },
            op,
        };
        let tx = self.db.begin_write().unwrap();
        let r = apply_command(&tx, self.index, &cmd).unwrap();
        tx.commit().unwrap();
        r.outcome
    }

    fn node(&self, name: &str, status: NodeStatus) {
        let tx = self.db.begin_write().unwrap();
        put(
            &tx,
            NODES,
            name.as_bytes(),
            &NodeRecord {
                name: name.into(),
                status,
                since_ms: 0,
            },
        )
        .unwrap();
        tx.commit().unwrap();
    }

    fn read(&self) -> StateReader {
        StateReader::new(&self.db).unwrap()
    }
}

fn job(name: &str, count: u32) -> Job {
    Job {
        namespace: "shop".into(),
        name: name.into(),
        command: "/usr/bin/web".into(),
        args: vec![],
        env: Default::default(),
        workdir: None,
        uid: 1000,
        gid: 1000,
        count,
        cpu_millis: None,
        memory_mb: None,
        constraints: Constraints::default(),
        restart: Restart::default(),
        spiffe_id: format!("spiffe://td/ns/shop/{name}"),
    }
}

fn place(id: &str, node: &str, version: u64, index: u32) -> Placement {
    Placement {
        id: id.into(),
        namespace: "shop".into(),
        job: "web".into(),
        job_version: version,
        index,
        node: node.into(),
        previous: None,
    }
}

const A: &str = "aaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbb";
const C: &str = "cccccccccccccccc";

fn refused(o: &Outcome) -> bool {
    matches!(o, Outcome::Rejected(Rejection::AllocRefused(_)))
}

fn setup() -> Db {
    let mut d = Db::new();
    d.node("n1", NodeStatus::Active);
    d.node("n2", NodeStatus::Active);
    d.node("gone", NodeStatus::Evicted);
    assert_eq!(
        d.run(Op::PutJob { job: job("web", 2) }),
        Outcome::Revision(1)
    );
    d
}

#[test]
fn placements_are_checked_against_the_job_and_the_node() {
    let mut d = setup();
    let o = |d: &mut Db, p: Placement| d.run(Op::PlaceAllocs { allocs: vec![p] });
    // Unknown job, stale version, index past count, unknown or inactive node.
    let mut unknown = place(A, "n1", 1, 0);
    unknown.job = "api".into();
    assert!(refused(&o(&mut d, unknown)));
    assert!(refused(&o(&mut d, place(A, "n1", 2, 0))), "stale version");
    assert!(refused(&o(&mut d, place(A, "n1", 1, 2))), "index >= count");
    assert!(refused(&o(&mut d, place(A, "n9", 1, 0))), "unknown node");
    assert_eq!(
        o(&mut d, place(A, "gone", 1, 0)),
        Outcome::Rejected(Rejection::NodeInactive)
    );
    // A malformed placement is refused in apply too.
    assert!(matches!(
        o(&mut d, place("BAD", "n1", 1, 0)),
        Outcome::Rejected(Rejection::Invalid(_))
    ));
    assert!(d.read().allocs(10).unwrap().is_empty());
    // All or nothing: one bad placement in a batch writes none.
    let o2 = d.run(Op::PlaceAllocs {
        allocs: vec![place(A, "n1", 1, 0), place(B, "n1", 1, 5)],
    });
    assert!(refused(&o2));
    assert!(d.read().alloc(A).unwrap().is_none());
    assert_eq!(d.read().node_alloc_revision("n1").unwrap(), 0);

    assert_eq!(
        d.run(Op::PlaceAllocs {
            allocs: vec![place(A, "n1", 1, 0), place(B, "n2", 1, 1)],
        }),
        Outcome::Done
    );
    let a = d.read().alloc(A).unwrap().unwrap();
    assert_eq!(
        (a.desired, a.state, a.placed_by.as_str()),
        (
            AllocDesired::Run,
            AllocState::Pending,
            "spiffe://td/user/sched"
        )
    );
    assert!(refused(&o(&mut d, place(A, "n2", 1, 1))), "id in use");
    let r = d.read();
    assert_eq!(r.allocs_of_node("n1").unwrap().len(), 1);
    assert_eq!(r.allocs_of_node("n2").unwrap()[0].id, B);
    assert_eq!(r.allocs_of_job("shop", Some("web"), 10).unwrap().len(), 2);
    assert_eq!(r.allocs_of_job("shop", None, 10).unwrap().len(), 2);
    assert!(r.allocs_of_job("sho", None, 10).unwrap().is_empty());
    assert_eq!(r.node_alloc_revision("n1").unwrap(), 1);
    // A stopped job takes no placement; a drained node neither.
    assert_eq!(
        d.run(Op::SetNodeDrain {
            node: "n1".into(),
            drain: true
        }),
        Outcome::Done
    );
    assert!(refused(&o(&mut d, place(C, "n1", 1, 0))), "drained");
    assert_eq!(
        d.read().node_drains().unwrap()["n1"].by,
        "spiffe://td/user/sched"
    );
    d.run(Op::SetNodeDrain {
        node: "n1".into(),
        drain: false,
    });
    assert!(d.read().node_drains().unwrap().is_empty());
    assert_eq!(
        d.run(Op::SetNodeDrain {
            node: "n9".into(),
            drain: true
        }),
        Outcome::Rejected(Rejection::NotFound)
    );
    d.run(Op::StopJob {
        namespace: "shop".into(),
        name: "web".into(),
    });
    assert!(refused(&o(&mut d, place(C, "n1", 1, 0))), "job stopped");
}

#[test]
fn reports_are_confined_to_the_node_and_removal_to_finished_allocations() {
    let mut d = setup();
    d.run(Op::PlaceAllocs {
        allocs: vec![place(A, "n1", 1, 0), place(B, "n2", 1, 1)],
    });
    let upd = |id: &str, state| AllocUpdate {
        id: id.into(),
        state,
        exit_code: None,
        restarts: 2,
        message: "ok".into(),
    };
    // n1 reporting on n2's allocation: refused, and its own update in the batch not written.
    assert_eq!(
        d.run(Op::ReportAllocStatus {
            node: "n1".into(),
            updates: vec![upd(A, AllocState::Running), upd(B, AllocState::Failed)],
        }),
        Outcome::Rejected(Rejection::WrongNode(B.into()))
    );
    assert_eq!(
        d.read().alloc(A).unwrap().unwrap().state,
        AllocState::Pending
    );
    let rev = d.read().node_alloc_revision("n1").unwrap();
    assert_eq!(
        d.run(Op::ReportAllocStatus {
            node: "n1".into(),
            updates: vec![upd(A, AllocState::Running), upd(C, AllocState::Running)],
        }),
        Outcome::Done,
        "an unknown id is skipped"
    );
    let a = d.read().alloc(A).unwrap().unwrap();
    assert_eq!(
        (a.state, a.restarts, a.message.as_str()),
        (AllocState::Running, 2, "ok")
    );
    assert_eq!(
        d.read().node_alloc_revision("n1").unwrap(),
        rev,
        "reports do not wake the feed"
    );
    // Removal: refused while running or desired run; allowed once stopped and terminal.
    assert!(refused(&d.run(Op::RemoveAllocs {
        ids: vec![A.into()]
    })));
    assert_eq!(
        d.run(Op::StopAllocs {
            ids: vec![A.into(), C.into()]
        }),
        Outcome::Rejected(Rejection::NotFound)
    );
    assert_eq!(
        d.run(Op::StopAllocs {
            ids: vec![A.into()]
        }),
        Outcome::Done
    );
    assert_eq!(
        d.read().alloc(A).unwrap().unwrap().desired,
        AllocDesired::Stop
    );
    assert!(d.read().node_alloc_revision("n1").unwrap() > rev);
    assert!(refused(&d.run(Op::RemoveAllocs {
        ids: vec![A.into()]
    })));
    d.run(Op::ReportAllocStatus {
        node: "n1".into(),
        updates: vec![upd(A, AllocState::Stopped)],
    });
    assert_eq!(
        d.run(Op::RemoveAllocs {
            ids: vec![A.into()]
        }),
        Outcome::Done
    );
    assert!(d.read().alloc(A).unwrap().is_none());
    assert!(d.read().allocs_of_node("n1").unwrap().is_empty());
    assert_eq!(
        d.read()
            .allocs_of_job("shop", Some("web"), 10)
            .unwrap()
            .len(),
        1
    );
    // Lost, then removed once its job is purged.
    assert_eq!(
        d.run(Op::MarkAllocsLost {
            ids: vec![B.into()]
        }),
        Outcome::Done
    );
    assert_eq!(d.read().alloc(B).unwrap().unwrap().state, AllocState::Lost);
    assert!(refused(&d.run(Op::RemoveAllocs {
        ids: vec![B.into()]
    })));
    d.run(Op::StopJob {
        namespace: "shop".into(),
        name: "web".into(),
    });
    d.run(Op::PurgeJob {
        namespace: "shop".into(),
        name: "web".into(),
    });
    assert_eq!(
        d.run(Op::RemoveAllocs {
            ids: vec![B.into()]
        }),
        Outcome::Done
    );
    assert!(d.read().allocs(10).unwrap().is_empty());
}

#[test]
fn a_node_holds_a_bounded_number_of_allocations() {
    let mut d = Db::new();
    d.node("n1", NodeStatus::Active);
    let mut big = job("web", limits::MAX_JOB_COUNT);
    big.name = "web".into();
    d.run(Op::PutJob { job: big });
    let mk = |i: usize| place(&format!("{i:016}"), "n1", 1, (i % 1000) as u32);
    let first: Vec<_> = (0..limits::MAX_ALLOCS_PER_NODE).map(mk).collect();
    assert_eq!(d.run(Op::PlaceAllocs { allocs: first }), Outcome::Done);
    assert!(matches!(
        d.run(Op::PlaceAllocs {
            allocs: vec![mk(limits::MAX_ALLOCS_PER_NODE)]
        }),
        Outcome::Rejected(Rejection::LimitReached(_))
    ));
}

fn user_entry(id: &str, selectors: &[&str]) -> RegistrationEntry {
    RegistrationEntry {
        id: id.into(),
        spiffe_id: "spiffe://td/ns/shop/web".into(),
        parent: "n1".into(),
        selectors: selectors.iter().map(|s| (*s).to_owned()).collect(),
        ttl_s: 3600,
        dns_names: vec![],
        revision: 0,
    }
}

#[test]
fn each_allocation_owns_a_derived_entry_while_it_should_run() {
    let mut d = setup();
    assert_eq!(
        d.run(Op::PlaceAllocs {
            allocs: vec![place(A, "n1", 1, 0), place(B, "n2", 1, 1)],
        }),
        Outcome::Done
    );
    let e = d.read().entry(&format!("alloc-{A}")).unwrap().unwrap();
    assert_eq!(e.spiffe_id, "spiffe://td/ns/shop/web");
    assert_eq!(e.parent, "n1");
    assert_eq!(
        e.selectors,
        vec![format!("ringzero:job:{A}"), "unix:uid:1000".to_owned()]
    );
    assert_eq!(e.ttl_s, 3600);
    // Through the parent index, i.e. the node's entry feed: n1 sees A only.
    let ids = |d: &Db, n: &str| -> Vec<String> {
        d.read()
            .entries_of(n)
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect()
    };
    assert_eq!(ids(&d, "n1"), vec![format!("alloc-{A}")]);
    assert_eq!(ids(&d, "n2"), vec![format!("alloc-{B}")]);

    // Stopped: gone (and the feed's change table says so); lost: gone.
    assert_eq!(
        d.run(Op::StopAllocs {
            ids: vec![A.into()]
        }),
        Outcome::Done
    );
    assert!(d.read().entry(&format!("alloc-{A}")).unwrap().is_none());
    assert!(ids(&d, "n1").is_empty());
    let changes = d.read().entry_changes_since("n1", 0, 100).unwrap();
    assert!(
        changes
            .iter()
            .any(|c| c.removed && c.entry_id == format!("alloc-{A}"))
    );
    assert_eq!(
        d.run(Op::MarkAllocsLost {
            ids: vec![B.into()]
        }),
        Outcome::Done
    );
    assert!(ids(&d, "n2").is_empty());

    // Purging the job drops the entries of allocations still desired to run.
    assert_eq!(
        d.run(Op::PlaceAllocs {
            allocs: vec![place(C, "n1", 1, 1)],
        }),
        Outcome::Done
    );
    assert_eq!(ids(&d, "n1"), vec![format!("alloc-{C}")]);
    d.run(Op::StopJob {
        namespace: "shop".into(),
        name: "web".into(),
    });
    assert_eq!(
        d.run(Op::PurgeJob {
            namespace: "shop".into(),
            name: "web".into(),
        }),
        Outcome::Done
    );
    assert!(ids(&d, "n1").is_empty());
    // Removal (job gone) is fine with the entry already gone.
    assert_eq!(
        d.run(Op::RemoveAllocs {
            ids: vec![A.into(), B.into(), C.into()],
        }),
        Outcome::Done
    );
}

#[test]
fn user_written_entries_cannot_claim_an_allocation() {
    let mut d = setup();
    d.run(Op::PlaceAllocs {
        allocs: vec![place(A, "n1", 1, 0)],
    });
    let invalid = |o: Outcome| matches!(o, Outcome::Rejected(Rejection::Invalid(_)));
    // A hostile entry selecting another principal's task, with or without a uid.
    for selectors in [
        &[&*format!("ringzero:job:{A}"), "unix:uid:0"][..],
        &[&*format!("ringzero:job:{A}")][..],
    ] {
        assert!(invalid(d.run(Op::PutEntry {
            entry: user_entry("0123abcd", selectors),
        })));
    }
    // Rewriting or deleting the derived entry is refused: only apply touches it.
    assert!(invalid(d.run(Op::PutEntry {
        entry: user_entry(&format!("alloc-{A}"), &["unix:uid:0"]),
    })));
    assert!(invalid(d.run(Op::DeleteEntry {
        id: format!("alloc-{A}"),
    })));
    let e = d.read().entry(&format!("alloc-{A}")).unwrap().unwrap();
    assert_eq!(e.selectors[1], "unix:uid:1000");
    assert!(d.read().entry("0123abcd").unwrap().is_none());
    // An ordinary entry is still fine.
    assert!(matches!(
        d.run(Op::PutEntry {
            entry: user_entry("0123abcd", &["unix:uid:1000"]),
        }),
        Outcome::Revision(_)
    ));
}
