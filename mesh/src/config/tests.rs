#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

fn settings() -> Settings {
    Settings {
        workload_api: Some("unix:///run/agent.sock".into()),
        inbound: vec!["127.0.0.1:8443=127.0.0.1:8080".into()],
        allow: vec!["spiffe://example.org/ns/shop/*".into()],
        ..Settings::default()
    }
}

#[test]
fn a_minimal_config_validates_with_defaults() {
    let c = settings().validate(None).unwrap();
    assert_eq!(c.workload_api, PathBuf::from("/run/agent.sock"));
    assert_eq!(c.inbound[0].listen, "127.0.0.1:8443".parse().unwrap());
    assert_eq!(c.inbound[0].target.to_string(), "127.0.0.1:8080");
    assert_eq!(c.svid_timeout, DEFAULT_SVID_TIMEOUT);
    assert_eq!(c.max_conn_age, DEFAULT_MAX_CONN_AGE);
    assert_eq!(c.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
    assert!(!c.allow_trust_domain && !c.unsafe_target && !c.proxy_protocol);
}

#[test]
fn parsers_accept_the_documented_forms() {
    let i = parse_inbound("127.0.0.1:8443=127.0.0.1:8080").unwrap();
    assert!(i.target.is_loopback());
    let i = parse_inbound("[::]:8443=[::1]:8080").unwrap();
    assert_eq!(i.target.to_string(), "[::1]:8080");
    assert!(i.target.is_loopback());
    assert!(
        parse_inbound("0.0.0.0:1=localhost:80")
            .unwrap()
            .target
            .is_loopback()
    );
    let o =
        parse_outbound("127.0.0.1:5432=db.internal:8443@spiffe://example.org/ns/shop/db").unwrap();
    assert_eq!(o.target.host(), "db.internal");
    assert_eq!(o.target.port(), 8443);
    assert_eq!(o.expect.as_str(), "spiffe://example.org/ns/shop/db");
    assert!(matches!(
        parse_allow("spiffe://example.org/ns/shop/*").unwrap(),
        SpiffeIdPattern::Below(_)
    ));
    assert!(matches!(
        parse_allow("spiffe://example.org/ns/shop/web").unwrap(),
        SpiffeIdPattern::Exact(_)
    ));
    for ok in ["unix:///a/b.sock", "unix:/a/b.sock", "/a/b.sock"] {
        assert_eq!(parse_workload_api(ok).unwrap(), PathBuf::from("/a/b.sock"));
    }
    assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
}

#[test]
fn hostile_values_are_refused_without_panicking() {
    let long = "a".repeat(MAX_VALUE_LEN + 1);
    for bad in [
        "",
        "=",
        "==",
        "127.0.0.1:8443",
        "127.0.0.1:8443=",
        "=127.0.0.1:80",
        "127.0.0.1:0=127.0.0.1:80",
        "127.0.0.1:8443=127.0.0.1:0",
        "127.0.0.1:8443=127.0.0.1:99999",
        "127.0.0.1:8443=127.0.0.1",
        "localhost:8443=127.0.0.1:80",
        "127.0.0.1:8443=-bad-.host:80",
        "127.0.0.1:8443=ho st:80",
        "127.0.0.1:8443=a..b:80",
        "127.0.0.1:8443=:80",
        "127.0.0.1:8443=\u{0}:80",
        "127.0.0.1:8443=h\u{e9}:80",
        &long,
    ] {
        // A listen port of 0 is allowed (ephemeral, for tests); everything else must fail.
        if bad == "127.0.0.1:0=127.0.0.1:80" {
            assert!(parse_inbound(bad).is_ok());
            continue;
        }
        assert!(parse_inbound(bad).is_err(), "inbound {bad:?}");
    }
    for bad in [
        "127.0.0.1:1=h:2",
        "127.0.0.1:1=h:2@",
        "127.0.0.1:1=h:2@spiffe://",
        "127.0.0.1:1=h:2@spiffe://td",
        "127.0.0.1:1=h:2@spiffe://td/",
        "127.0.0.1:1=h:2@spiffe://TD/a",
        "127.0.0.1:1=h:2@spiffe://td/a/../b",
        "127.0.0.1:1=h:2@http://td/a",
        "127.0.0.1:1=@spiffe://td/a",
        "127.0.0.1:1=h:2@spiffe://td/a@b",
    ] {
        assert!(parse_outbound(bad).is_err(), "outbound {bad:?}");
    }
    for bad in [
        "",
        "*",
        "/*",
        "spiffe://td",
        "spiffe://td/*/x",
        "spiffe://td/a*",
        "spiffe://td/a/**",
        "spiffe://td/a//b",
        "spiffe://td/a/",
        "spiffe://td/./a",
        "spiffe://user@td/a",
        "spiffe://td:80/a",
        "spiffe://td/a?x",
        "spiffe://td/a#x",
    ] {
        assert!(parse_allow(bad).is_err(), "allow {bad:?}");
    }
    for bad in [
        "",
        "relative/path",
        "unix:relative",
        "unix://host/run/a.sock",
        "tcp://127.0.0.1:1",
        "unix:///a?b",
        "unix:///a#b",
        "/a\nb",
    ] {
        assert!(parse_workload_api(bad).is_err(), "endpoint {bad:?}");
    }
    for bad in [
        "",
        "0s",
        "10",
        "-1s",
        "8d",
        "1 parsec",
        "99999999999999999999h",
    ] {
        assert!(parse_duration(bad).is_err(), "duration {bad:?}");
    }
    for bad in ["", "localhost:9901", "9901", "127.0.0.1:x"] {
        assert!(parse_admin(bad).is_err(), "admin {bad:?}");
    }
}

#[test]
fn the_allow_prefix_is_segment_aware() {
    let p = parse_allow("spiffe://td/ns/shop/*").unwrap();
    let id = |s| SpiffeId::parse(s).unwrap();
    assert!(p.matches(&id("spiffe://td/ns/shop/web")));
    assert!(p.matches(&id("spiffe://td/ns/shop/web/v2")));
    assert!(!p.matches(&id("spiffe://td/ns/shopping")));
    assert!(!p.matches(&id("spiffe://td/ns/shop")));
    assert!(!p.matches(&id("spiffe://other/ns/shop/web")));
}

#[test]
fn deny_by_default() {
    let errors = Settings {
        allow: vec![],
        ..settings()
    }
    .validate(None)
    .unwrap_err();
    assert!(
        matches!(errors.0[..], [ConfigError::NoAllowRule(_)]),
        "{errors}"
    );
    assert!(errors.to_string().contains("--allow-trust-domain"));

    let c = Settings {
        allow: vec![],
        allow_trust_domain: Some(true),
        ..settings()
    }
    .validate(None)
    .unwrap();
    assert!(c.allow.is_empty() && c.allow_trust_domain);

    // Authority policies as the only allow source: an explicit opt-in too, admitting no one
    // until a policy does (not the whole trust domain).
    assert!(errors.to_string().contains("--allow-from-authority"));
    let c = Settings {
        allow: vec![],
        allow_from_authority: Some(true),
        ..settings()
    }
    .validate(None)
    .unwrap();
    assert!(c.allow.is_empty() && c.allow_from_authority && !c.allow_trust_domain);
    let file = Settings::from_toml("allow_from_authority = true").unwrap();
    assert_eq!(file.allow_from_authority, Some(true));

    // An outbound-only sidecar needs no allow rule.
    Settings {
        inbound: vec![],
        allow: vec![],
        outbound: vec!["127.0.0.1:1=h:2@spiffe://td/a".into()],
        ..settings()
    }
    .validate(None)
    .unwrap();
}

#[test]
fn targets_and_listeners_are_confined() {
    let errors = Settings {
        inbound: vec!["0.0.0.0:8443=10.0.0.5:8080".into()],
        ..settings()
    }
    .validate(None)
    .unwrap_err();
    assert!(matches!(
        errors.0[..],
        [ConfigError::TargetNotLoopback { .. }]
    ));
    Settings {
        inbound: vec!["0.0.0.0:8443=10.0.0.5:8080".into()],
        unsafe_target: Some(true),
        ..settings()
    }
    .validate(None)
    .unwrap();
    for target in [
        "db.internal:80",
        "127.0.0.1.nip.io:80",
        "[::ffff:10.0.0.1]:80",
    ] {
        let errors = Settings {
            inbound: vec![format!("127.0.0.1:1={target}")],
            ..settings()
        }
        .validate(None)
        .unwrap_err();
        assert!(
            matches!(errors.0[..], [ConfigError::TargetNotLoopback { .. }]),
            "{target}"
        );
    }
    assert!(
        HostPort::parse("[::ffff:127.0.0.1]:80")
            .unwrap()
            .is_loopback()
    );

    let errors = Settings {
        outbound: vec!["0.0.0.0:5432=h:1@spiffe://td/db".into()],
        ..settings()
    }
    .validate(None)
    .unwrap_err();
    assert!(matches!(
        errors.0[..],
        [ConfigError::OutboundNotLoopback(_)]
    ));

    // The admin port names the identity and its targets: loopback unless said otherwise.
    for admin in ["0.0.0.0:9901", "10.1.2.3:9901", "[::]:9901"] {
        let base = Settings {
            admin: Some(admin.into()),
            ..settings()
        };
        let errors = base.clone().validate(None).unwrap_err();
        assert!(
            matches!(errors.0[..], [ConfigError::AdminNotLoopback(_)]),
            "{admin}: {errors}"
        );
        let c = Settings {
            unsafe_admin: Some(true),
            ..base
        }
        .validate(None)
        .unwrap();
        assert_eq!(c.admin, Some(admin.parse().unwrap()));
    }
    for admin in ["127.0.0.1:9901", "[::1]:9901"] {
        let c = Settings {
            admin: Some(admin.into()),
            ..settings()
        }
        .validate(None)
        .unwrap();
        assert!(!c.unsafe_admin);
    }

    let errors = Settings {
        outbound: vec!["127.0.0.1:8443=h:1@spiffe://td/db".into()],
        admin: Some("127.0.0.1:8443".into()),
        ..settings()
    }
    .validate(None)
    .unwrap_err();
    assert_eq!(errors.0.len(), 2, "{errors}");
    assert!(
        errors
            .0
            .iter()
            .all(|e| matches!(e, ConfigError::DuplicateListen(_)))
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let errors = Settings {
        workload_api: None,
        inbound: vec!["bad".into(), "127.0.0.1:1=10.1.1.1:2".into()],
        allow: vec!["nope".into()],
        svid_timeout: Some("forever".into()),
        ..Settings::default()
    }
    .validate(None)
    .unwrap_err();
    let text = errors.to_string();
    for needle in [
        "Workload API",
        "--inbound",
        "--allow",
        "duration",
        "loopback",
    ] {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }
    assert!(
        Settings::default()
            .validate(Some("unix:///x"))
            .unwrap_err()
            .0
            .contains(&ConfigError::NoListener)
    );
}

#[test]
fn the_environment_supplies_the_endpoint_and_flags_win() {
    let c = Settings {
        workload_api: None,
        ..settings()
    }
    .validate(Some("unix:///from/env.sock"))
    .unwrap();
    assert_eq!(c.workload_api, PathBuf::from("/from/env.sock"));
    let c = settings().validate(Some("unix:///from/env.sock")).unwrap();
    assert_eq!(c.workload_api, PathBuf::from("/run/agent.sock"));
}

#[test]
fn the_file_form_parses_and_flags_override_it() {
    let file = Settings::from_toml(
        r#"
workload_api = "unix:///run/file.sock"
inbound = ["127.0.0.1:8443=127.0.0.1:8080"]
allow = ["spiffe://example.org/ns/shop/*"]
outbound = ["127.0.0.1:5432=db.internal:8443@spiffe://example.org/ns/shop/db"]
admin = "127.0.0.1:9901"
max_conn_age = "5m"
drain_timeout = "3s"
proxy_protocol = true
"#,
    )
    .unwrap();
    let flags = Settings {
        workload_api: Some("unix:///run/flag.sock".into()),
        allow: vec!["spiffe://example.org/ns/web/*".into()],
        drain_timeout: Some("1s".into()),
        ..Settings::default()
    };
    let c = flags.merge(file).validate(None).unwrap();
    assert_eq!(c.workload_api, PathBuf::from("/run/flag.sock"));
    assert_eq!(c.allow.len(), 1);
    assert_eq!(c.allow[0].to_string(), "spiffe://example.org/ns/web/*");
    assert_eq!(c.inbound.len(), 1);
    assert_eq!(c.outbound.len(), 1);
    assert_eq!(c.max_conn_age, Duration::from_secs(300));
    assert_eq!(c.drain_timeout, Duration::from_secs(1));
    assert!(c.proxy_protocol);

    for bad in [
        "inbound = 1",
        "unknown_key = true",
        "allow = [1]",
        "[inbound]",
        "workload_api = ",
        "\u{0}",
    ] {
        assert!(Settings::from_toml(bad).is_err(), "{bad:?}");
    }
    assert!(Settings::from_toml(&"#".repeat(MAX_FILE_LEN + 1)).is_err());
}

#[test]
fn too_many_entries_are_refused() {
    let errors = Settings {
        allow: vec!["spiffe://td/a".into(); MAX_ENTRIES + 1],
        ..settings()
    }
    .validate(None)
    .unwrap_err();
    assert_eq!(errors.0, vec![ConfigError::TooMany("allow rules")]);
}

#[cfg(feature = "clap")]
mod flags {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        sidecar: Args,
    }

    #[test]
    fn an_endless_config_file_is_refused_by_its_size_not_read_into_memory() {
        let cli = Cli::try_parse_from(["sidecar", "--config", "/dev/zero"]).unwrap();
        let errors = cli.sidecar.load().unwrap_err();
        assert!(
            matches!(&errors.0[..], [ConfigError::File(why)] if why.contains("larger than 1 MiB")),
            "{errors}"
        );
    }

    #[test]
    fn flags_parse_and_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mesh.toml");
        std::fs::write(
            &file,
            "workload_api = \"unix:///run/file.sock\"\ninbound = [\"127.0.0.1:8443=127.0.0.1:8080\"]\nallow = [\"spiffe://td/a\"]\ndrain_timeout = \"2s\"\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "sidecar",
            "--config",
            file.to_str().unwrap(),
            "--allow",
            "spiffe://td/ns/*",
            "--allow",
            "spiffe://td/b",
            "--outbound",
            "127.0.0.1:5432=db:1@spiffe://td/db",
            "--proxy-protocol",
            "--max-conn-age",
            "1m",
        ])
        .unwrap();
        let c = cli.sidecar.load().unwrap();
        assert_eq!(c.workload_api, PathBuf::from("/run/file.sock"));
        assert_eq!(c.allow.len(), 2);
        assert_eq!(c.inbound.len(), 1);
        assert_eq!(c.outbound.len(), 1);
        assert!(c.proxy_protocol);
        assert_eq!(c.max_conn_age, Duration::from_secs(60));
        assert_eq!(c.drain_timeout, Duration::from_secs(2));

        let missing = Cli::try_parse_from(["sidecar", "--config", "/nonexistent/mesh.toml"])
            .unwrap()
            .sidecar
            .load()
            .unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/mesh.toml"),
            "{missing}"
        );
    }
}
