//! The case index: every attack this suite performs, by attacker, with the test that runs it
//! and what it asserts. `Group::case` refuses a name that is not here and `Group::finish` one
//! that is here but did not run, so the index and the suite cannot drift apart;
//! `threat-model/adversarial.md` is checked against it too.

/// One attack.
#[derive(Debug)]
pub(crate) struct Case {
    pub(crate) attacker: &'static str,
    pub(crate) name: &'static str,
    /// The `#[test]` function that runs it.
    pub(crate) test: &'static str,
    /// What is asserted, beyond "refused".
    pub(crate) asserts: &'static str,
}

/// Printed for a case that cannot run in this environment.
pub(crate) const SKIPPED_MARK: &str = "SKIPPED";

const ANON: &str = "anonymous network client";
const THIEF: &str = "token thief";
const DEV: &str = "developer of another namespace";
const OPS: &str = "operator";
const NODE: &str = "compromised agent node";
const WORKLOAD: &str = "compromised workload process";
const REMOVED: &str = "removed or compromised authority node";
const LOCAL: &str = "local host";

const T_ANON: &str = "anonymous::anonymous_network_client";
const T_THIEF: &str = "thief::token_thief";
const T_USERS: &str = "users::developer_of_another_namespace_and_operator";
const T_NODES: &str = "nodes::compromised_agent_node_and_workload_process";
const T_AUTH: &str = "authority::removed_or_compromised_authority_node_and_local_host";

const fn case(
    attacker: &'static str,
    test: &'static str,
    name: &'static str,
    asserts: &'static str,
) -> Case {
    Case {
        attacker,
        name,
        test,
        asserts,
    }
}

pub(crate) const CASES: &[Case] = &[
    // An anonymous network client.
    case(
        ANON,
        T_ANON,
        "27 redemptions of random token ids get the wrong-secret answer, one audit record and no Raft write each",
        "PermissionDenied with the exact message of a wrong secret for every one, from three source addresses at once; at most 4 log entries for 28 refusals (status included); after the denial window the records for the 27 ids are at most 4 and account for exactly 27 attempts (suppressed_denials), actor anonymous, resource join-token, reason first_contact, source recorded",
    ),
    case(
        ANON,
        T_ANON,
        "one source past its burst gets ResourceExhausted while a joiner on another address still enrolls",
        "16 concurrent redemptions from 127.0.0.2: 10 to 13 refused (burst 10, refill 2/s), the rest ResourceExhausted; meanwhile a valid join token redeemed from 127.0.0.1 enrolls",
    ),
    case(
        ANON,
        T_ANON,
        "a login with a random invite is refused like a wrong secret, audited, and writes no profile",
        "`ringzero login --invite` with a forged invite carrying the real pin exits 1 with \"unknown token or wrong secret\", no profile file, a denial by anonymous on user:write for resource invite with the invite id, still one user",
    ),
    case(
        ANON,
        T_ANON,
        "garbage, HTTP/1.1 and a bogus TLS record on the API port are dropped and the node keeps serving",
        "each connection is closed by the server; `authority status` answers afterwards",
    ),
    case(
        ANON,
        T_ANON,
        "a 1 MiB first-contact message is refused by the size limit, not decoded",
        "RedeemJoinToken with a 1 MiB CSR fails with OutOfRange or ResourceExhausted (the decoder's limit), status answers",
    ),
    case(
        ANON,
        T_ANON,
        "privileged RPCs without a client certificate are Unauthenticated",
        "CreateJoinToken and AddUser carrying the admin's token but no client certificate fail with Unauthenticated and the transport's anonymous message",
    ),
    case(
        ANON,
        T_ANON,
        "an anonymous Raft AppendEntries is Unauthenticated and the term does not move",
        "a heartbeat claiming a term 100 ahead is refused Unauthenticated before Raft sees it; the term is unchanged",
    ),
    case(
        ANON,
        T_ANON,
        "a client certificate from a foreign trust domain fails the TLS handshake",
        "the server answers the certificate with a fatal alert; a Status call over it fails in the transport",
    ),
    case(
        ANON,
        T_ANON,
        "a rogue CA of this trust domain vouching for user/admin fails the TLS handshake, stolen admin token or not",
        "fatal alert; a Status call with the real admin token over that certificate fails in the transport",
    ),
    // A token thief.
    case(
        THIEF,
        T_THIEF,
        "a user's bound token presented over another user's identity is refused as peer_mismatch",
        "alice's token in a profile with bob's SVID: exit 1 \"bound to another peer\"; denial by bob with reason peer_mismatch naming the token's revocation ids",
    ),
    case(
        THIEF,
        T_THIEF,
        "a captured delegated token replayed after token revoke is refused as revoked",
        "the delegated token works, `token revoke` it, the replay exits 1 \"revoked\"; denial by alice with reason revoked",
    ),
    case(
        THIEF,
        T_THIEF,
        "a spliced token (the admin's authority block with another token's attenuation block) fails signature verification",
        "the narrow admin token is refused `user list` (operation not allowed); spliced with alice's time-only attenuation block and proof it is refused (signature); denial by admin on user:read with reason bad_signature",
    ),
    case(
        THIEF,
        T_THIEF,
        "a token re-signed with the attacker's key under the cluster's root key id fails verification, and an unknown key id too",
        "an admin token minted offline with a fresh key labelled with the cluster's key id: bad_signature on role:read; labelled with an unknown id: unknown_root_key on node:read",
    ),
    case(
        THIEF,
        T_THIEF,
        "a truncated token (its attenuation block dropped to regain the admin's rights) is refused",
        "the narrow admin token without its last block is refused `entry list`; denial on entry:read with reason bad_signature or malformed",
    ),
    case(
        THIEF,
        T_THIEF,
        "an attenuated copy of a user's own token cannot renew the profile (not_own_credential)",
        "the attenuated copy still reads status; `ringzero login` with it exits 1 (\"unattenuated\"), writes nothing; denial on user:renew with reason not_own_credential",
    ),
    case(
        THIEF,
        T_THIEF,
        "a hostile appended block (18 facts and a 6-atom check) is refused fast as unsupported_block while status keeps answering",
        "8 concurrent calls with the block appended to bob's token: each PermissionDenied \"refused before evaluation\" in under 2 s; status probed meanwhile keeps answering; denial with reason unsupported_block",
    ),
    case(
        THIEF,
        T_THIEF,
        "a captured token used after its expiry is refused as expired",
        "a 1 s attenuation of bob's token used 2 s later: exit 1 \"expired\"; denial with reason expired",
    ),
    // A developer of another namespace.
    case(
        DEV,
        T_USERS,
        "an entry in the payments namespace is denied on entry:write",
        "exit 1 naming entry:write on ns/payments/api; denial by shopdev, resource ns/payments/api, reason no_matching_right; no such entry",
    ),
    case(
        DEV,
        T_USERS,
        "an entry in its own namespace selecting payments' uid 2000 is denied on entry:select",
        "exit 1 naming entry:select on selector/unix/uid/2000/node/n1; denial on entry:select for that resource; no such entry",
    ),
    case(
        DEV,
        T_USERS,
        "an entry putting api.payments.internal or *.payments.internal in its SVIDs is denied on entry:dns",
        "exit 1 naming entry:dns on dns/internal/payments/api (and on dns/internal/payments/_wildcard for the wildcard); denial on entry:dns for that resource; no such entry",
    ),
    case(
        DEV,
        T_USERS,
        "taking over payments' existing entry by updating it to shop's ID or uid is denied",
        "UpdateEntry of payments' entry renamed into ns/shop, or re-pointed at uid 1000: PermissionDenied naming entry:write on ns/payments/cache (the right on what the entry was); denial on entry:write for that resource; the entry keeps its ID and selector",
    ),
    case(
        DEV,
        T_USERS,
        "deleting payments' entry is denied",
        "exit 1 permission denied; denial on entry:write for ns/payments/db; the entry is unchanged",
    ),
    case(
        DEV,
        T_USERS,
        "a weak entry (executable path only) in its own namespace, selecting every user's processes, is denied",
        "unix:path with --allow-weak-selectors: exit 1 naming entry:select on selector/unix/any/node/n1; denial for that resource; no such entry",
    ),
    case(
        DEV,
        T_USERS,
        "entries for the reserved IDs ringzero/authority/1 and user/admin are refused",
        "exit 1 naming entry:write on each (shop holds no right there, so the gate refuses before the reservation is reached); a denial on entry:write for each resource; no entry with either ID",
    ),
    case(
        DEV,
        T_USERS,
        "look-alike and traversal IDs (NS/shop, ns/shopx, dot segments, percent-encoding) never reach payments",
        "CreateEntry directly: dot segments and percent-encoding InvalidArgument, NS/shop/api and ns/shopx/api PermissionDenied; only shop's own entry exists",
    ),
    case(
        DEV,
        T_USERS,
        "token mint --for a right shop does not hold is denied as widening and audited",
        "entry:dns on ns/shop for its CI identity: exit 1 \"cannot grant more than its minter holds\"; denial on token:mint \"delegation would widen\" naming the subject",
    ),
    case(
        DEV,
        T_USERS,
        "a self-delegated token dies with the main token the admin revokes",
        "shopdev2 mints itself a token:mint token and uses it; the admin revokes shopdev2's main token; the self-delegated token is refused (revoked) and the denial is recorded",
    ),
    case(
        DEV,
        T_USERS,
        "a suspended user's certificate and the tokens it delegated open nothing until resumed",
        "a token shop delegated to its CI workload mints before; after `user suspend` shop's profile is refused (suspended_user) and the CI token too (cut_off_lineage), renewal fails; after `user resume` both work",
    ),
    // An operator.
    case(
        OPS,
        T_USERS,
        "an entry for spiffe://TD/ringzero/authority/1 is refused as reserved (the original attack)",
        "exit 1 \"reserved\" although the operator holds entry:write, entry:select and entry:dns everywhere; no such entry; a denial on entry:write with reason reserved_id",
    ),
    case(
        OPS,
        T_USERS,
        "the look-alike RingZero/Authority/1 is reserved too",
        "exit 1 \"reserved\" (reserved first segments compare case-insensitively); no such entry; a reserved_id denial naming it",
    ),
    case(
        OPS,
        T_USERS,
        "an entry for ringzero/node/x is refused as reserved",
        "exit 1 \"reserved\"; no such entry; a reserved_id denial naming it",
    ),
    case(
        OPS,
        T_USERS,
        "changing an existing entry's SPIFFE ID to user/admin is refused",
        "`entry update --spiffe-id spiffe://TD/user/admin` exits 1 \"reserved\"; the entry keeps its ID; no entry for user/admin; a reserved_id denial naming it",
    ),
    case(
        OPS,
        T_USERS,
        "user add is denied (user:write)",
        "exit 1 permission denied; denial on user:write; no profile written",
    ),
    case(
        OPS,
        T_USERS,
        "minting itself a cluster:admin token is denied as widening and audited",
        "exit 1 \"cannot grant more than its minter holds\"; denial on token:mint \"delegation would widen\" naming cluster:admin",
    ),
    case(
        OPS,
        T_USERS,
        "applying a custom role that grants cluster:admin is denied (role:write)",
        "exit 1 permission denied; denial on role:write; no such role listed",
    ),
    case(
        OPS,
        T_USERS,
        "an authority join token, to bring in a rogue member, is denied (cluster:admin)",
        "exit 1 permission denied; denial on cluster:admin",
    ),
    case(
        OPS,
        T_USERS,
        "sealing the audit log to drop its own records is denied (audit:seal)",
        "exit 1 permission denied; denial on audit:seal; no record dropped",
    ),
    // A compromised agent node.
    case(
        NODE,
        T_NODES,
        "MintSvids for another node's entry is refused and audited",
        "with the node's own key, SVID and token (read from the agent's data directory): its own entry is issued, n8's is not (\"not parented\"); denial by the node on svid:mint, resource node/n8",
    ),
    case(
        NODE,
        T_NODES,
        "a MintSvids batch over the 256-CSR cap is refused whole, nothing issued",
        "257 CSRs for its own entry: InvalidArgument \"at most 256\"; no svid:mint allow record added",
    ),
    case(
        NODE,
        T_NODES,
        "the node's credentials cannot list the nodes (node:read)",
        "`ringzero --profile D/node.profile node list` exits 1 permission denied; denial by the node on node:read",
    ),
    case(
        NODE,
        T_NODES,
        "the node's credentials cannot create an entry, not even for itself (entry:write)",
        "exit 1 permission denied; denial by the node on entry:write",
    ),
    case(
        NODE,
        T_NODES,
        "the node's token presented over a workload SVID of that node is refused as peer_mismatch",
        "ListNodes over the workload's SVID with the node's token: PermissionDenied \"bound to another peer\"; denial by the workload with reason peer_mismatch",
    ),
    case(
        NODE,
        T_NODES,
        "a RenewNode CSR naming another node still yields only the node's own identity",
        "the renewed SVID validates as spiffe://TD/ringzero/node/n7 whatever the CSR names",
    ),
    case(
        NODE,
        T_NODES,
        "the entry feed shows the node its own entries only, never another node's",
        "the first SyncEntries event holds exactly n7's entry",
    ),
    case(
        NODE,
        T_NODES,
        "after node evict the node's certificate and token are refused and the agent stops",
        "MintSvids and RenewNode with the stolen credentials: PermissionDenied \"evicted\"; the agent process exits non-zero",
    ),
    // A compromised workload process.
    case(
        WORKLOAD,
        T_NODES,
        "a workload SVID with the admin's stolen token is refused as peer_mismatch",
        "Status over the SVID the agent issued it, with the admin's token: PermissionDenied \"bound to another peer\"; denial by the workload with reason peer_mismatch",
    ),
    case(
        WORKLOAD,
        T_NODES,
        "a workload SVID cannot act as its agent: MintSvids is refused for a non-node identity",
        "MintSvids over the workload SVID with the node's stolen token: PermissionDenied \"not an agent node identity\"",
    ),
    case(
        WORKLOAD,
        T_NODES,
        "a Workload API caller of another uid gets no identity",
        "as uid 65534 (setpriv; root only, else SKIPPED) `agent fetch` on the agent's socket exits 1 \"no identity issued\" and prints no SPIFFE ID",
    ),
    // A removed or compromised authority node.
    case(
        REMOVED,
        T_AUTH,
        "the removed node deletes its keys, leaves REMOVED, exits, and authority run refuses its directory",
        "after `authority remove 3` node 3 exits non-zero, D/REMOVED exists, no *.key in D/keys; `authority run` on D exits non-zero \"was removed from the cluster\"",
    ),
    case(
        REMOVED,
        T_AUTH,
        "a directory restored from a backup (keys back, REMOVED deleted) cannot rejoin and deletes its keys again",
        "started again, node 3 is told \"not a member\" by its peers, deletes its keys, writes REMOVED and exits; still 2 members, writable, same term",
    ),
    case(
        REMOVED,
        T_AUTH,
        "its CA signing spiffe://TD/ringzero/authority/1 fails node 1's TLS handshake",
        "fatal alert; a Raft AppendEntries over it fails in the transport, never reaching a handler",
    ),
    case(
        REMOVED,
        T_AUTH,
        "its own authority/3 certificate is refused by Raft as not a member and by the API as not_a_member",
        "AppendEntries, unary and as the first message of an AppendStream: PermissionDenied \"not a member\"; Status with a token from its own Biscuit key: PermissionDenied, denial with reason not_a_member",
    ),
    case(
        REMOVED,
        T_AUTH,
        "its CA signing a user/admin certificate, with the admin's real token, is refused as unrecorded_certificate",
        "PermissionDenied; denial by user/admin with reason unrecorded_certificate",
    ),
    case(
        REMOVED,
        T_AUTH,
        "its CA signing a user/admin certificate that reuses the admin's recorded serial, with the admin's real token, is refused",
        "a certificate for user/admin with the serial of the admin's current SVID (public: every TLS server and the audit log see it), a fresh key, signed by node 3's CA, carrying the admin's token, listing users: PermissionDenied; denial on user:read with reason unrecorded_certificate (the serial is recorded with the member whose CA signed it)",
    ),
    case(
        REMOVED,
        T_AUTH,
        "its CA signing a workload certificate, with a token the cluster minted for that workload, is refused as removed_issuer",
        "the token works over a workload certificate of a current member's CA; over the removed CA's: PermissionDenied, denial with reason removed_issuer",
    ),
    case(
        REMOVED,
        T_AUTH,
        "its Biscuit key minting an admin token after the removal is refused as retired_key",
        "`--token` with it over the real admin profile exits 1 \"removed authority node\"; denial on user:read with reason retired_key",
    ),
    case(
        REMOVED,
        T_AUTH,
        "its audit key signing a rewritten log after the removal is refused by an auditor that refreshed",
        "a fresh copy of the admin profile, refreshed after the removal, pins node 3's audit key as retired and verifies the honest export; the export with the removal's record rewritten and re-signed now with node 3's audit key exits 1 from `audit verify --no-remember --file`: \"audit key K was retired at\" (before the head's time)",
    ),
    case(
        REMOVED,
        T_AUTH,
        "member 2 sending AppendEntries that names removed node 3 as leader is refused and audited",
        "with a certificate from member 2's own CA: PermissionDenied \"claims to be from node 3\"; a denial by authority/2 with reason raft_message_refused … AppendEntries; the same message over an AppendStream: the stream ends with PermissionDenied \"claims to be from node 3\"",
    ),
    case(
        REMOVED,
        T_AUTH,
        "member 2 sending a Vote that names node 3 as candidate is refused and audited",
        "PermissionDenied \"claims to be from node 3\"; denial raft_message_refused … Vote; the term does not move",
    ),
    case(
        REMOVED,
        T_AUTH,
        "a member's Vote with an empty log and a higher term, sent to the follower while the leader is live, starts no election",
        "with the leader's keys, Votes for terms +1 and +2 with no log to the follower are answered and refused by its lease; a second later the term and the leader are unchanged (`takeover` does not fire while the leader is heard)",
    ),
    case(
        REMOVED,
        T_AUTH,
        "member 2 naming itself but rewriting entries node 1 has applied is refused and audited",
        "AppendEntries whose vote names its true sender (2) with entries 0..2 under member 2's leadership: PermissionDenied \"contradicts applied entry\"; denial raft_message_refused; node 1 keeps its term and keeps applying",
    ),
    case(
        REMOVED,
        T_AUTH,
        "remove 3 --compromised after the plain removal marks its keys compromised: out of the JWKS, its certificates fail the handshake",
        "node 3's CA is in the JWKS while retired; after --compromised every key of node 3 is \"compromised\" in GetBundle, its CA is out of the JWKS, and a workload certificate it signs gets a fatal alert",
    ),
    // The local host.
    case(
        LOCAL,
        T_AUTH,
        "a world-readable state.redb makes authority run refuse, naming the file and the chmod",
        "with raft/state.redb chmod 0644 on a stopped node, `authority run` exits non-zero naming the file and `chmod -R go-rwx`",
    ),
];

/// Attacks on the same surfaces that other suites already perform: listed so the index is
/// complete, not counted here.
pub(crate) const COVERED_ELSEWHERE: &[(&str, &str, &str)] = &[
    (
        WORKLOAD,
        "exec of another binary after connecting to the Workload API never gets the new binary's identity",
        "agent/tests/workload_api.rs exec_after_connect_never_gets_the_new_binarys_identity",
    ),
    (
        WORKLOAD,
        "an executable rewritten in place with its mtime restored loses the hash's identity",
        "tests/tests/attestation_attacks.rs an_executable_rewritten_in_place_with_its_mtime_restored_loses_the_hashs_identity; agent/src/attest/tests.rs a_rewritten_executable_with_its_mtime_restored_is_hashed_again",
    ),
    (
        WORKLOAD,
        "a bind mount over a selected path in a private mount namespace earns nothing",
        "tests/tests/attestation_attacks.rs a_bind_mount_over_a_path_in_a_private_mount_namespace_earns_nothing; agent/src/attest/tests.rs a_process_in_another_mount_namespace_gets_no_path",
    ),
    (
        WORKLOAD,
        "a dead process's pid reused by another process fails verification",
        "agent/src/attest/tests.rs a_dead_process_fails_verification",
    ),
    (
        WORKLOAD,
        "a uid hammering the agent with large executables holds back neither other uids nor the agent",
        "tests/tests/attestation_attacks.rs a_uid_hammering_with_large_executables_holds_back_neither_other_uids_nor_the_agents_threads",
    ),
    (
        WORKLOAD,
        "a newer entry cannot displace another workload's default SVID",
        "tests/tests/attestation_attacks.rs the_oldest_matching_entry_is_the_default_svid_even_when_a_newer_id_sorts_first",
    ),
    (
        WORKLOAD,
        "connections beyond the per-uid cap on the Workload API are closed",
        "agent/tests/workload_api.rs connections_beyond_the_per_uid_cap_are_closed",
    ),
    (
        ANON,
        "1030 anonymous connections and 300k streams on one connection are bounded",
        "tests/tests/bounded_connections.rs",
    ),
    (
        ANON,
        "a join with a wrong pin is refused before the secret is sent",
        "tests/tests/authority_join.rs a_join_without_a_matching_pin_is_refused_before_the_secret_is_sent",
    ),
    (
        NODE,
        "an expired certificate on an open connection is cut",
        "tests/tests/bounded_connections.rs expired_certificate_on_an_open_connection_is_cut_and_refused",
    ),
    (
        REMOVED,
        "a removed member cannot rejoin with its old token",
        "tests/tests/authority_join.rs a_removed_member_cannot_rejoin_without_a_new_token",
    ),
    (
        REMOVED,
        "tokens signed by a member removed as compromised are refused",
        "tests/tests/authority_revocation.rs tokens_signed_by_a_node_removed_as_compromised_are_refused",
    ),
    (
        LOCAL,
        "a non-root caller of the admin socket is refused and audited",
        "tests/tests/users_processes.rs break_glass_admin_profile_and_admin_renewal",
    ),
];
