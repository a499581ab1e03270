//! Fencing the scheduler's writes, real processes: an authority, one agent, and two scheduler
//! users (the built-in `scheduler` role) calling the RPCs directly. A takes the cluster lease
//! and gets an epoch; its placement under it lands; an operator's write without a lease is
//! refused while the lease is held, naming the holder. A's lease expires and B takes it over
//! (a greater epoch): A's in-flight place and stop under its old epoch are refused
//! (FailedPrecondition) and write nothing; B's writes under its own land.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use ringzero_proto::client::{AuthorityClient, ClientError, Profile};
use ringzero_proto::pb;
use ringzero_tests::agent::{agent_cmd, my_uid, spawn_ready_agent};
use ringzero_tests::{SoloAuthority, client_of, show};

const TD: &str = "fence.test";
const X: &str = "xxxxxxxxxxxxxxxx";
const Y: &str = "yyyyyyyyyyyyyyyy";
const TTL_MS: u64 = 1_500;

fn scheduler(a: &SoloAuthority, name: &str) -> AuthorityClient {
    let path: PathBuf = a.root.path().join(format!("{name}.profile"));
    let out = a.cli(&[
        "user",
        "add",
        name,
        "--role",
        "scheduler",
        "--out",
        &path.to_string_lossy(),
    ]);
    assert!(out.status.success(), "user add {name}: {}", show(&out));
    client_of(&path)
}

async fn acquire(c: &mut AuthorityClient, holder: &str) -> pb::SchedLease {
    let req = pb::AcquireSchedLeaseRequest {
        scope: String::new(),
        holder: holder.into(),
        ttl_ms: TTL_MS,
    };
    c.call(|mut g| {
        let req = req.clone();
        async move { g.acquire_sched_lease(req).await }
    })
    .await
    .unwrap()
}

fn fence(holder: &str, epoch: u64) -> Option<pb::SchedLeaseFence> {
    Some(pb::SchedLeaseFence {
        scope: String::new(),
        holder: holder.into(),
        epoch,
    })
}

async fn place(
    c: &mut AuthorityClient,
    id: &str,
    index: u32,
    lease: Option<pb::SchedLeaseFence>,
) -> Result<pb::AllocsReply, ClientError> {
    let req = pb::PlaceAllocsRequest {
        allocs: vec![pb::AllocPlacement {
            id: id.into(),
            namespace: "shop".into(),
            job: "web".into(),
            job_version: 1,
            index,
            node: "n1".into(),
            previous: String::new(),
        }],
        lease,
    };
    c.call(|mut g| {
        let req = req.clone();
        async move { g.place_allocs(req).await }
    })
    .await
}

async fn stop(
    c: &mut AuthorityClient,
    id: &str,
    lease: Option<pb::SchedLeaseFence>,
) -> Result<pb::AllocsReply, ClientError> {
    let req = pb::AllocIdsRequest {
        ids: vec![id.into()],
        lease,
    };
    c.call(|mut g| {
        let req = req.clone();
        async move { g.stop_allocs(req).await }
    })
    .await
}

async fn allocs(c: &mut AuthorityClient) -> Vec<pb::Alloc> {
    c.call(|mut g| async move { g.list_allocs(pb::ListAllocsRequest::default()).await })
        .await
        .unwrap()
        .allocs
}

fn refused_with(r: Result<pb::AllocsReply, ClientError>, words: &str) {
    match r {
        Err(ClientError::Status { code, message }) => {
            assert_eq!(code, tonic::Code::FailedPrecondition, "{message}");
            assert!(message.contains(words), "{message}");
        }
        other => panic!("expected a refusal mentioning {words:?}, got {other:?}"),
    }
}

#[test]
fn a_deposed_schedulers_writes_are_refused() {
    let a = SoloAuthority::start("sched-fence", TD);
    let token = format!("@{}", a.node_token("n1", "10m").display());
    let dir = a.root.path().join("agent-n1");
    let socket = a.root.path().join("n1.sock");
    let cmd = agent_cmd(a.root.path(), &a.addr, Some(&token), &dir, &socket);
    let _agent = spawn_ready_agent(
        "agent-n1",
        cmd,
        &a.root.path().join("agent-n1.log"),
        Duration::from_secs(30),
    );
    let uid = my_uid();
    let job = a.root.path().join("web.toml");
    std::fs::write(
        &job,
        format!(
            "namespace = \"shop\"\nname = \"web\"\ncommand = \"/bin/sleep\"\n\
             args = [\"120\"]\nuid = {uid}\ngid = {uid}\ncount = 2\n\
             spiffe_id = \"spiffe://{TD}/ns/shop/web\"\n"
        ),
    )
    .unwrap();
    let out = a.cli(&["job", "run", &job.to_string_lossy()]);
    assert!(out.status.success(), "job run: {}", show(&out));

    let mut sched_a = scheduler(&a, "sched-a");
    let mut sched_b = scheduler(&a, "sched-b");
    let p = Profile::from_toml(&std::fs::read_to_string(&a.profile).unwrap()).unwrap();
    let mut admin = AuthorityClient::new(p.credentials().unwrap(), p.authorities.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // A holds the lease: its write under it lands.
        let lease_a = acquire(&mut sched_a, "a").await;
        assert!(lease_a.epoch > 0, "{lease_a:?}");
        place(&mut sched_a, X, 0, fence("a", lease_a.epoch))
            .await
            .unwrap();
        // An operator's write without a lease, while it is held: refused, naming the holder.
        refused_with(place(&mut admin, Y, 1, None).await, "held by a");
        // B's write under A's lease: refused (not B's to use).
        refused_with(
            stop(&mut sched_b, X, fence("a", lease_a.epoch)).await,
            "no longer held",
        );

        // A is paused past its ttl; B takes over with a greater epoch.
        tokio::time::sleep(Duration::from_millis(TTL_MS + 200)).await;
        let lease_b = acquire(&mut sched_b, "b").await;
        assert!(lease_b.epoch > lease_a.epoch, "{lease_a:?} {lease_b:?}");

        // A's in-flight pass lands after the takeover: refused, nothing written.
        refused_with(
            place(&mut sched_a, Y, 1, fence("a", lease_a.epoch)).await,
            "no longer held",
        );
        refused_with(
            stop(&mut sched_a, X, fence("a", lease_a.epoch)).await,
            "no longer held",
        );
        let now = allocs(&mut admin).await;
        assert!(now.iter().all(|x| x.id != Y), "{now:?}");
        let x = now.iter().find(|x| x.id == X).unwrap();
        assert_eq!(x.desired, pb::AllocDesired::Run as i32);
        assert_eq!(x.placed_by, format!("spiffe://{TD}/user/sched-a"));

        // B's writes under its own epoch land.
        let r = place(&mut sched_b, Y, 1, fence("b", lease_b.epoch))
            .await
            .unwrap();
        assert_eq!(r.allocs.len(), 1);
        let r = stop(&mut sched_b, X, fence("b", lease_b.epoch))
            .await
            .unwrap();
        assert_eq!(r.allocs[0].desired, pb::AllocDesired::Stop as i32);
    });

    // The refused writes are on the record, with the lease they claimed.
    let out = a.cli(&["audit", "query", "--json", "--limit", "10000"]);
    assert!(out.status.success(), "audit query: {}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let refused = text
        .lines()
        .filter(|l| l.contains("sched-a") && l.contains("lease_epoch"))
        .filter(|l| l.contains("no longer held"))
        .count();
    assert!(refused >= 2, "{text}");
}
