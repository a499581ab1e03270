use super::client::Retry;
use super::*;

/// An AppendEntries from `sender` at an old term: checked, then answered by Raft (with its
/// higher vote), changing nothing.
fn stale_append(sender: NodeId) -> pb::RaftPayload {
    let rpc = AppendEntriesRequest::<TypeConfig> {
        vote: openraft::Vote::new_committed(0, sender),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    };
    pb::RaftPayload {
        data: encode(&rpc).unwrap(),
    }
}

#[tokio::test]
async fn a_stream_admits_its_caller_again_at_every_message() {
    use crate::testing::{Cluster, test_config};
    let c = Cluster::start(3, test_config(), 7).await.unwrap();
    let leader = c.leader(&[], Duration::from_secs(10)).await.unwrap();
    let others: Vec<NodeId> = (1..=3).filter(|n| *n != leader).collect();
    let (receiver, sender) = (others[0], others[1]);
    let td = TrustDomain::new("example.org").unwrap();
    let service = RaftService::new(c.raft(receiver).unwrap().clone(), td);

    let (requests, incoming) = tokio::sync::mpsc::channel(4);
    let (out, mut answers) = tokio::sync::mpsc::channel(4);
    let serving = tokio::spawn(service.clone().serve_append_stream(
        sender,
        None,
        tokio_stream::wrappers::ReceiverStream::new(incoming),
        out,
    ));
    requests.send(Ok(stale_append(sender))).await.unwrap();
    let first = answers.recv().await.unwrap();
    assert!(first.is_ok(), "a member's message is answered: {first:?}");

    // The sender leaves the cluster while its stream is open: its next message is refused
    // and the stream ends.
    c.change_voters(&[leader, receiver], Duration::from_secs(10))
        .await
        .unwrap();
    let mut refused = None;
    for _ in 0..100 {
        let m = c
            .raft(receiver)
            .unwrap()
            .metrics()
            .borrow()
            .membership_config
            .clone();
        if !m.membership().nodes().any(|(n, _)| *n == sender) {
            requests.send(Ok(stale_append(sender))).await.unwrap();
            refused = answers.recv().await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = refused
        .expect("the removal reached the receiver")
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("not a member"), "{s:?}");
    assert!(
        answers.recv().await.is_none(),
        "the stream ends at a refusal"
    );
    serving.await.unwrap();

    // The node shutting down ends an open stream, so the server's graceful shutdown does not
    // wait on it.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let (_requests, incoming) = tokio::sync::mpsc::channel(4);
    let (out, mut answers) = tokio::sync::mpsc::channel(4);
    let serving = tokio::spawn(service.clone().with_shutdown(stopping).serve_append_stream(
        leader,
        None,
        tokio_stream::wrappers::ReceiverStream::new(incoming),
        out,
    ));
    stop.send(true).unwrap();
    assert!(
        answers.recv().await.is_none(),
        "the stream ends at shutdown"
    );
    serving.await.unwrap();

    // A certificate that has expired since the stream opened: refused at its next message.
    let (requests, incoming) = tokio::sync::mpsc::channel(4);
    let (out, mut answers) = tokio::sync::mpsc::channel(4);
    let expired = std::time::SystemTime::now() - Duration::from_secs(1);
    tokio::spawn(service.serve_append_stream(
        leader,
        Some(expired),
        tokio_stream::wrappers::ReceiverStream::new(incoming),
        out,
    ));
    requests.send(Ok(stale_append(leader))).await.unwrap();
    let s = answers.recv().await.unwrap().unwrap_err();
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    assert_eq!(s.message(), ringzero_proto::transport::EXPIRED_MESSAGE);
    assert!(answers.recv().await.is_none());
}

#[test]
fn authority_ids_round_trip_and_refuse_others() {
    let td = TrustDomain::new("example.org").unwrap();
    let id = authority_id(&td, 7).unwrap();
    assert_eq!(id.as_str(), "spiffe://example.org/ringzero/authority/7");
    assert_eq!(authority_node_id(&td, &id), Some(7));
    for other in [
        "spiffe://example.org/ringzero/authority/x",
        "spiffe://example.org/ringzero/authority/7/extra",
        "spiffe://example.org/ringzero/node/7",
        "spiffe://other.org/ringzero/authority/7",
        "spiffe://example.org/user/7",
    ] {
        assert_eq!(
            authority_node_id(&td, &SpiffeId::parse(other).unwrap()),
            None,
            "{other}"
        );
    }
}

#[test]
fn a_peer_going_and_coming_back_is_one_state_each() {
    let c = Contacts::default();
    assert_eq!(c.since(3), None);
    c.unreachable(3, "connection refused");
    let first = c.book().down.get(&3).copied();
    c.unreachable(3, "connection refused");
    assert_eq!(
        c.book().down.get(&3).copied(),
        first,
        "retries keep the first failure"
    );
    c.refused_as_non_member(3);
    c.touch(3);
    assert!(c.book().down.is_empty());
    c.slow(3, "deadline exceeded");
    assert!(
        c.book().down.is_empty(),
        "a timeout right after an answer is load"
    );
    c.slow(4, "deadline exceeded");
    assert!(
        c.book().down.contains_key(&4),
        "a peer that never answered is down"
    );
    assert!(c.refusing().is_empty());
    assert!(c.since(3).is_some());
}

#[test]
fn an_unreachable_peer_is_retried_within_the_shortest_election_timeout() {
    let got: Vec<u64> = Retry::of(crate::RaftTiming::default())
        .intervals()
        .take(5)
        .map(|d| d.as_millis() as u64)
        .collect();
    assert_eq!(got, [50, 100, 150, 150, 150]);
    let slow = crate::RaftTiming {
        heartbeat_ms: 100,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
    };
    assert!(
        Retry::of(slow)
            .intervals()
            .take(100)
            .all(|d| d <= Duration::from_millis(300))
    );
}

/// Every client openraft makes for a peer (a replication task's, each leadership check's)
/// shares one channel: a second client waits on the first one's connection instead of opening
/// its own. The peer here accepts TCP and never answers the TLS handshake, so each call times
/// out (within its own timeout, not the connect timeout) and the connections the peer saw are
/// counted.
#[tokio::test]
async fn every_client_for_a_peer_shares_one_connection() {
    use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
    use ringzero_policy::svid::TrustBundle;
    use ringzero_policy::tls::RotatingCert;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counting = Arc::clone(&accepted);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            counting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(tcp);
        }
    });

    let td = TrustDomain::new("example.org").unwrap();
    let keys = crate::keys::NodeKeys::generate(&td, 1, std::time::SystemTime::now()).unwrap();
    let (chain, key) = crate::node::own_svid(&keys, &td, 1).unwrap();
    let creds = PeerCredentials {
        trust_domain: td.clone(),
        cert: RotatingCert::new(chain, key).unwrap(),
        bundle: BundleSource::new(TrustBundle::new(td, vec![keys.ca.cert_der().clone()]).unwrap()),
    };
    let mut net =
        super::client::GrpcNetwork::new(creds, Contacts::default(), crate::RaftTiming::default());
    let peer = BasicNode::new(addr);
    let rpc = || AppendEntriesRequest::<TypeConfig> {
        vote: openraft::Vote::new_committed(1, 1),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    };
    for _ in 0..3 {
        let mut client = net.new_client(2, &peer).await;
        let started = std::time::Instant::now();
        let answer = client
            .append_entries(rpc(), RPCOption::new(Duration::from_millis(200)))
            .await;
        assert!(answer.is_err(), "the peer never answers");
        // The call's own timeout bounds it, not the connection's (3 s).
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "three clients, one connection"
    );
}
