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
        let at = (self.index + 1) * 10;
        self.run_as("spiffe://td/user/sched", at, op)
    }

    fn run_as(&mut self, actor: &str, time_ms: u64, op: Op) -> Outcome {
        self.index += 1;
        let cmd = Command {
            id: CommandId::fresh(),
            time_ms,
            audit: AuditRecord {
                actor: actor.into(),
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

// ---- fencing: allocation writes under the scheduler lease ----

const SCHED_A: &str = "spiffe://td/user/sched-a";
const SCHED_B: &str = "spiffe://td/user/sched-b";
const OPERATOR: &str = "spiffe://td/user/admin";
const T0: u64 = 1_000_000;
const TTL: u64 = 10_000;

/// Takes `scope`'s lease as `holder` for `actor` at `at`; its epoch.
fn take(d: &mut Db, actor: &str, holder: &str, scope: &str, at: u64) -> u64 {
    let o = d.run_as(
        actor,
        at,
        Op::AcquireSchedLease {
            scope: scope.into(),
            holder: holder.into(),
            ttl_ms: TTL,
        },
    );
    assert!(matches!(o, Outcome::Lease { .. }), "{o:?}");
    d.read().sched_lease(scope).unwrap().unwrap().epoch
}

fn under(scope: &str, holder: &str, epoch: u64) -> Option<LeaseFence> {
    Some(LeaseFence {
        scope: scope.into(),
        holder: holder.into(),
        epoch,
    })
}

fn fenced(lease: Option<LeaseFence>, write: AllocWrite) -> Op {
    Op::FencedAllocWrite { lease, write }
}

fn lost(o: &Outcome) -> bool {
    matches!(o, Outcome::Rejected(Rejection::LeaseLost { .. }))
}

#[test]
fn fenced_writes_land_only_under_the_current_lease() {
    let mut d = setup();
    // No lease anywhere: an operator's write lands.
    let op = fenced(None, AllocWrite::Place(vec![place(A, "n1", 1, 0)]));
    assert_eq!(d.run_as(OPERATOR, T0, op), Outcome::Done);
    let e1 = take(&mut d, SCHED_A, "a", "", T0);
    assert!(e1 > 0);
    // No lease while one is held: refused, naming the holder; nothing written.
    let op = fenced(None, AllocWrite::Place(vec![place(B, "n1", 1, 1)]));
    assert_eq!(
        d.run_as(OPERATOR, T0 + 1, op),
        Outcome::Rejected(Rejection::LeaseHeld {
            holder: "a".into(),
            expires_ms: T0 + TTL
        })
    );
    assert!(d.read().alloc(B).unwrap().is_none());
    let op = fenced(None, AllocWrite::Stop(vec![A.into()]));
    assert!(matches!(
        d.run_as(OPERATOR, T0 + 1, op),
        Outcome::Rejected(Rejection::LeaseHeld { .. })
    ));
    // The holder at its epoch: lands.
    let op = fenced(
        under("", "a", e1),
        AllocWrite::Place(vec![place(B, "n1", 1, 1)]),
    );
    assert_eq!(d.run_as(SCHED_A, T0 + 2, op), Outcome::Done);
    // The holder's name and epoch from another caller: refused.
    let op = fenced(under("", "a", e1), AllocWrite::Stop(vec![A.into()]));
    assert!(lost(&d.run_as(SCHED_B, T0 + 3, op)));
    // A wrong epoch: refused.
    let op = fenced(under("", "a", e1 + 1), AllocWrite::Stop(vec![A.into()]));
    assert!(lost(&d.run_as(SCHED_A, T0 + 3, op)));
    // Expired by the command's time, even before anyone took over: refused.
    let op = fenced(under("", "a", e1), AllocWrite::Stop(vec![A.into()]));
    assert!(lost(&d.run_as(SCHED_A, T0 + TTL, op)));
    assert_eq!(
        d.read().alloc(A).unwrap().unwrap().desired,
        AllocDesired::Run
    );
    // B takes over: a new, greater epoch.
    let e2 = take(&mut d, SCHED_B, "b", "", T0 + TTL);
    assert!(e2 > e1);
    // The deposed A's in-flight writes with its old epoch: refused, nothing written.
    let op = fenced(
        under("", "a", e1),
        AllocWrite::Place(vec![place(C, "n2", 1, 0)]),
    );
    assert!(lost(&d.run_as(SCHED_A, T0 + TTL + 1, op)));
    assert!(d.read().alloc(C).unwrap().is_none());
    for w in [
        AllocWrite::Lost(vec![A.into()]),
        AllocWrite::Stop(vec![A.into()]),
        AllocWrite::Remove(vec![A.into()]),
    ] {
        assert!(lost(&d.run_as(
            SCHED_A,
            T0 + TTL + 1,
            fenced(under("", "a", e1), w)
        )));
    }
    assert_eq!(
        d.read().alloc(A).unwrap().unwrap().state,
        AllocState::Pending
    );
    // B under the old epoch: refused; under its own: lands.
    let op = fenced(under("", "b", e1), AllocWrite::Stop(vec![A.into()]));
    assert!(lost(&d.run_as(SCHED_B, T0 + TTL + 2, op)));
    let op = fenced(under("", "b", e2), AllocWrite::Stop(vec![A.into()]));
    assert_eq!(d.run_as(SCHED_B, T0 + TTL + 2, op), Outcome::Done);
    assert_eq!(
        d.read().alloc(A).unwrap().unwrap().desired,
        AllocDesired::Stop
    );
    // A renewal keeps the epoch; a release and a new grant to the same holder do not.
    assert_eq!(take(&mut d, SCHED_B, "b", "", T0 + TTL + 5_000), e2);
    let release = Op::ReleaseSchedLease {
        scope: String::new(),
        holder: "b".into(),
    };
    assert_eq!(d.run_as(SCHED_B, T0 + TTL + 5_001, release), Outcome::Done);
    // Released: an operator's write lands again; B's old epoch does not.
    let op = fenced(None, AllocWrite::Lost(vec![B.into()]));
    assert_eq!(d.run_as(OPERATOR, T0 + TTL + 5_002, op), Outcome::Done);
    let e3 = take(&mut d, SCHED_B, "b", "", T0 + TTL + 5_003);
    assert!(e3 > e2);
    let op = fenced(under("", "b", e2), AllocWrite::Stop(vec![B.into()]));
    assert!(lost(&d.run_as(SCHED_B, T0 + TTL + 5_004, op)));
    // An unknown id under a valid lease: the write's own answer.
    let op = fenced(under("", "b", e3), AllocWrite::Stop(vec![C.into()]));
    assert_eq!(
        d.run_as(SCHED_B, T0 + TTL + 5_005, op),
        Outcome::Rejected(Rejection::NotFound)
    );
    // Epoch 0 (never given) is malformed.
    let op = fenced(under("", "b", 0), AllocWrite::Stop(vec![B.into()]));
    assert!(matches!(
        d.run_as(SCHED_B, T0 + TTL + 5_006, op),
        Outcome::Rejected(Rejection::Invalid(_))
    ));
}

#[test]
fn a_lease_covers_its_namespace_or_all() {
    let mut d = setup();
    let mut api = job("web", 2);
    api.namespace = "api".into();
    api.spiffe_id = "spiffe://td/ns/api/web".into();
    assert!(matches!(
        d.run(Op::PutJob { job: api }),
        Outcome::Revision(_)
    ));
    let in_api = |id: &str| Placement {
        namespace: "api".into(),
        ..place(id, "n2", 1, 0)
    };
    // A lease on another namespace does not block an operator here.
    let e_other = take(&mut d, SCHED_A, "a", "other", T0);
    let op = fenced(None, AllocWrite::Place(vec![place(A, "n1", 1, 0)]));
    assert_eq!(d.run_as(OPERATOR, T0 + 1, op), Outcome::Done);
    // Nor does it let its holder write here.
    let op = fenced(
        under("other", "a", e_other),
        AllocWrite::Stop(vec![A.into()]),
    );
    assert!(matches!(
        d.run_as(SCHED_A, T0 + 2, op),
        Outcome::Rejected(Rejection::AllocRefused(_))
    ));
    // A lease on shop: an operator is refused in shop, not in api.
    let e_shop = take(&mut d, SCHED_B, "b", "shop", T0 + 3);
    let op = fenced(None, AllocWrite::Stop(vec![A.into()]));
    assert_eq!(
        d.run_as(OPERATOR, T0 + 4, op),
        Outcome::Rejected(Rejection::LeaseHeld {
            holder: "b".into(),
            expires_ms: T0 + 3 + TTL
        })
    );
    let op = fenced(None, AllocWrite::Place(vec![in_api(B)]));
    assert_eq!(d.run_as(OPERATOR, T0 + 4, op), Outcome::Done);
    // The scope must cover every allocation of a batch: all or nothing.
    let batch = vec![place(C, "n1", 1, 1), in_api("dddddddddddddddd")];
    let op = fenced(under("shop", "b", e_shop), AllocWrite::Place(batch));
    assert!(matches!(
        d.run_as(SCHED_B, T0 + 5, op),
        Outcome::Rejected(Rejection::AllocRefused(_))
    ));
    assert!(d.read().alloc(C).unwrap().is_none());
    let op = fenced(
        under("shop", "b", e_shop),
        AllocWrite::Place(vec![place(C, "n1", 1, 1)]),
    );
    assert_eq!(d.run_as(SCHED_B, T0 + 5, op), Outcome::Done);
    // Stops by id are judged by the allocations' namespaces.
    let op = fenced(
        under("shop", "b", e_shop),
        AllocWrite::Stop(vec![A.into(), B.into()]),
    );
    assert!(matches!(
        d.run_as(SCHED_B, T0 + 6, op),
        Outcome::Rejected(Rejection::AllocRefused(_))
    ));
    // A cluster lease covers both, and blocks an operator in api too.
    let e_all = take(&mut d, SCHED_A, "a", "", T0 + 7);
    let op = fenced(None, AllocWrite::Stop(vec![B.into()]));
    assert!(matches!(
        d.run_as(OPERATOR, T0 + 8, op),
        Outcome::Rejected(Rejection::LeaseHeld { .. })
    ));
    let op = fenced(
        under("", "a", e_all),
        AllocWrite::Stop(vec![A.into(), B.into()]),
    );
    assert_eq!(d.run_as(SCHED_A, T0 + 8, op), Outcome::Done);
    // Once both have expired, an operator's write lands.
    let op = fenced(None, AllocWrite::Stop(vec![C.into()]));
    assert_eq!(d.run_as(OPERATOR, T0 + 7 + TTL, op), Outcome::Done);
}

#[test]
fn a_jobs_node_list_binds_every_placer_and_a_lost_verdict_stands() {
    let mut d = setup();
    let mut pinned = job("pinned", 1);
    pinned.constraints.nodes = vec!["n2".into()];
    assert_eq!(d.run(Op::PutJob { job: pinned }), Outcome::Revision(1));
    let on = |node: &str| {
        let mut p = place(A, node, 1, 0);
        p.job = "pinned".into();
        p
    };
    // Whoever holds job:launch, the submitter's node list holds in apply.
    assert!(refused(&d.run(Op::PlaceAllocs {
        allocs: vec![on("n1")]
    })));
    assert_eq!(
        d.run(Op::PlaceAllocs {
            allocs: vec![on("n2")]
        }),
        Outcome::Done
    );
    // The scheduler marks it lost; its agent, back from a partition, reports it running.
    assert_eq!(
        d.run(Op::MarkAllocsLost {
            ids: vec![A.into()]
        }),
        Outcome::Done
    );
    d.run(Op::ReportAllocStatus {
        node: "n2".into(),
        updates: vec![AllocUpdate {
            id: A.into(),
            state: AllocState::Running,
            exit_code: None,
            restarts: 0,
            message: String::new(),
        }],
    });
    assert_eq!(d.read().alloc(A).unwrap().unwrap().state, AllocState::Lost);
}
