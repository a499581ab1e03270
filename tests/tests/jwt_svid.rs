//! JWT-SVIDs end to end, all real processes: an authority, an agent enrolled with a join
//! token, an entry for this test's uid. A workload fetches a JWT-SVID through the agent's
//! socket with the standard `spiffe` client crate and validates it locally against the JWT
//! bundles from `FetchJWTBundles`; a generic JWT library (`jsonwebtoken`) validates it against
//! `ringzero bundle show --format jwks`; `ringzero agent fetch --jwt` and `agent validate-jwt`
//! do the same from the command line. Wrong audience, expired (signed by the authority's real
//! key), foreign-key and `alg: none` tokens are refused by `ValidateJWTSVID` and by
//! `validate-jwt`; an identity the caller was not attested for yields none; each mint is
//! audited once and cached fetches are not.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use ringzero_policy::SpiffeId;
use ringzero_tests::agent::{agent_cmd, my_uid, spawn_ready_agent};
use ringzero_tests::{SoloAuthority, audit, ringzero, run_timeout, show};

const TD: &str = "jwt.test";

fn jwt_mints(a: &SoloAuthority, id: &str) -> Vec<serde_json::Value> {
    audit(a, &["--operation", "svid:mint"])
        .into_iter()
        .filter(|r| {
            let d = r["details"].to_string();
            d.contains("jwt_sha256") && d.contains(id)
        })
        .collect()
}

/// `ringzero agent validate-jwt - --audience AUD` with `token` on stdin.
fn cli_validate(a: &SoloAuthority, socket: &str, token: &str, aud: &str) -> std::process::Output {
    let mut cmd = ringzero(a.root.path());
    cmd.args([
        "agent",
        "validate-jwt",
        "-",
        "--audience",
        aud,
        "--json",
        "--socket",
        socket,
    ]);
    ringzero_tests::run_timeout_stdin(&mut cmd, Some(token.as_bytes()), Duration::from_secs(20))
}

#[test]
fn jwt_svids_fetch_validate_and_refuse() {
    let a = SoloAuthority::start("jwt-svid", TD);
    let token = a.node_token("n7", "10m");
    let dir = a.root.path().join("agent-n7");
    let socket = a.root.path().join("n7.sock");
    let cmd = agent_cmd(
        a.root.path(),
        &a.addr,
        Some(&format!("@{}", token.display())),
        &dir,
        &socket,
    );
    let agent = spawn_ready_agent(
        "agent-n7",
        cmd,
        &a.root.path().join("agent-n7.log"),
        Duration::from_secs(20),
    );
    let me = format!("spiffe://{TD}/ns/test/me");
    let other = format!("spiffe://{TD}/ns/test/other");
    for (id, uid) in [(&me, my_uid()), (&other, my_uid() + 1)] {
        let out = a.cli(&[
            "entry",
            "create",
            "--spiffe-id",
            id,
            "--node",
            "n7",
            "--selector",
            &format!("unix:uid:{uid}"),
        ]);
        assert!(out.status.success(), "entry create: {}", show(&out));
    }
    let sock = socket.display().to_string();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (token, kid) = rt.block_on(async {
        let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{sock}"))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let svid = loop {
            match client.fetch_jwt_svid(["db", "cache"], None).await {
                Ok(s) => break s,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "no JWT-SVID: {e}\n{}",
                        agent.log()
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        assert_eq!(svid.spiffe_id().to_string(), me);
        // The standard client validates locally against the agent's JWT bundles.
        let bundles = client.fetch_jwt_bundles().await.unwrap();
        let local = spiffe::JwtSvid::parse_and_validate(svid.token(), &bundles, &["db"]).unwrap();
        assert_eq!(local.spiffe_id().to_string(), me);
        assert!(spiffe::JwtSvid::parse_and_validate(svid.token(), &bundles, &["web"]).is_err());
        // And through the agent: ValidateJWTSVID.
        let v = client
            .validate_jwt_token("cache", svid.token())
            .await
            .unwrap();
        assert_eq!(v.spiffe_id().to_string(), me);
        assert!(
            client
                .validate_jwt_token("web", svid.token())
                .await
                .is_err()
        );
        // Cached: the same audience set (in any order) gets the same token.
        let again = client.fetch_jwt_svid(["cache", "db"], None).await.unwrap();
        assert_eq!(again.token(), svid.token());
        // An identity this process was not attested for: none.
        let other_id = spiffe::SpiffeId::try_from(other.as_str()).unwrap();
        let err = client
            .fetch_jwt_svid(["db"], Some(&other_id))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no identity issued"), "{err}");
        (svid.token().to_owned(), svid.key_id().to_owned())
    });

    // Minted once (the second fetch was served from the cache), never for `other`.
    let mints = jwt_mints(&a, &me);
    assert_eq!(
        mints.len(),
        1,
        "one record per mint, none per cached fetch: {mints:#?}"
    );
    assert!(mints[0].to_string().contains(&kid), "{}", mints[0]);
    assert!(jwt_mints(&a, &other).is_empty());

    // What a compromised node can do with its own credentials (its node.profile): mint a
    // token for its own entries, for any audience; never for another node's entry, and that
    // attempt is an audited denial.
    let out = a.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        &format!("spiffe://{TD}/ns/test/elsewhere"),
        "--node",
        "n8",
        "--selector",
        "unix:uid:4242",
    ]);
    assert!(out.status.success(), "entry create: {}", show(&out));
    let elsewhere = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let own = {
        let out = a.cli(&["entry", "list", "--node", "n7", "--json"]);
        assert!(out.status.success(), "{}", show(&out));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let v: serde_json::Value = serde_json::from_str(&text)
            .or_else(|_| {
                serde_json::from_str(&format!("[{}]", text.lines().collect::<Vec<_>>().join(",")))
            })
            .unwrap();
        let list = v.as_array().cloned().unwrap_or_else(|| vec![v.clone()]);
        list.iter()
            .find(|e| e["spiffe_id"] == me.as_str())
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("no entry for {me} in {text}"))
    };
    let mut node = ringzero_tests::client_of(&dir.join("node.profile"));
    let (stolen_ok, stolen_err) = rt.block_on(async {
        let mint = |entry_id: String| {
            move |mut c: ringzero_proto::pb::authority_client::AuthorityClient<_>| {
                let req = ringzero_proto::pb::MintJwtSvidRequest {
                    entry_id: entry_id.clone(),
                    audience: vec!["anything".into()],
                };
                async move { c.mint_jwt_svid(req).await }
            }
        };
        let ok = node.call(mint(own.clone())).await;
        let err = node.call(mint(elsewhere.clone())).await;
        (ok, err)
    });
    assert_eq!(stolen_ok.unwrap().spiffe_id, me);
    let err = stolen_err.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::PermissionDenied), "{err}");
    let denied = audit(&a, &["--decision", "deny", "--resource", "node/n8"]);
    assert!(
        denied
            .iter()
            .any(|r| r.to_string().contains("parented to another node")),
        "{denied:#?}"
    );

    // A generic JWT library validates against `bundle show --format jwks`.
    let out = a.cli(&["bundle", "show", "--format", "jwks"]);
    assert!(out.status.success(), "{}", show(&out));
    let jwks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str() && k["use"] == "jwt-svid")
        .unwrap_or_else(|| panic!("kid {kid} not in {jwks}"))
        .clone();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["db"]);
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation).unwrap();
    assert_eq!(data.claims["sub"], me.as_str());
    assert_eq!(data.header.typ.as_deref(), Some("JWT"));
    let exp = data.claims["exp"].as_u64().unwrap();
    let iat = data.claims["iat"].as_u64().unwrap();
    assert_eq!(exp - iat, 300, "5 min default lifetime");
    validation.set_audience(&["web"]);
    assert!(jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation).is_err());

    // The CLI: the token alone on the last line of stdout; validate-jwt prints the claims.
    let mut cmd = ringzero(a.root.path());
    cmd.args([
        "agent",
        "fetch",
        "--jwt",
        "--audience",
        "db",
        "--socket",
        &sock,
    ]);
    let out = run_timeout(cmd, Duration::from_secs(20));
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let cli_token = stdout.lines().last().unwrap().to_owned();
    assert_eq!(cli_token.split('.').count(), 3);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&me));
    let out = cli_validate(&a, &sock, &cli_token, "db");
    assert!(out.status.success(), "{}", show(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["spiffe_id"], me.as_str());
    assert_eq!(v["claims"]["aud"][0], "db");

    // Hostile tokens: wrong audience; expired (signed by the authority's own key); signed by a
    // foreign key under the bundle's kid; `alg: none`.
    let pkcs8 = std::fs::read(a.dir.join("keys/jwt.key")).unwrap();
    let rng = ring::rand::SystemRandom::new();
    let real = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng).unwrap();
    let sub = SpiffeId::parse(&me).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let aud = vec!["db".to_owned()];
    let expired =
        ringzero_policy::jwt::sign(&real, &kid, &sub, &aud, now - 600, now - 300).unwrap();
    let foreign_pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let foreign = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        foreign_pkcs8.as_ref(),
        &rng,
    )
    .unwrap();
    let forged = ringzero_policy::jwt::sign(&foreign, &kid, &sub, &aud, now, now + 300).unwrap();
    let claims = token.split('.').nth(1).unwrap();
    let none = format!(
        "{}.{claims}.",
        URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","kid":"{kid}","typ":"JWT"}}"#))
    );
    let none_signed = format!(
        "{}.{claims}.{}",
        URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","kid":"{kid}","typ":"JWT"}}"#)),
        token.split('.').nth(2).unwrap()
    );
    let cases = [
        ("wrong audience", token.clone(), "web", "audience"),
        ("expired", expired, "db", "expired"),
        ("foreign key", forged, "db", "signature"),
        ("alg none", none, "db", "algorithm"),
        ("alg none, real signature", none_signed, "db", "algorithm"),
    ];
    rt.block_on(async {
        let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{sock}"))
            .await
            .unwrap();
        for (what, t, aud, why) in &cases {
            let err = client.validate_jwt_token(aud, t).await.unwrap_err();
            assert!(err.to_string().contains(why), "{what}: {err}");
        }
    });
    for (what, t, aud, why) in &cases {
        let out = cli_validate(&a, &sock, t, aud);
        assert!(!out.status.success(), "{what} accepted: {}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(why),
            "{what}: {}",
            show(&out)
        );
        // The generic library refuses them too (the expired one only by `exp`).
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.set_audience(&[*aud]);
        validation.leeway = 0;
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(t, &key, &validation).is_err(),
            "{what}"
        );
    }
}
