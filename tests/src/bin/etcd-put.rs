//! `etcd-put`: the etcd side of `scripts/bench-vs-etcd.sh`. Closed-loop clients, each with its
//! own HTTP/2 connection to the etcd leader, calling `etcdserverpb.KV/Put` back to back with
//! unique keys and fixed-size values — the load shape, statistics and report (text, or the same
//! JSON as `ringzero bench write --json`) of `ringzero_telemetry::load`.
//!
//! ```text
//! etcd-put --endpoints 127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379 \
//!          --clients 16 --duration 10s [--warmup 1s] [--value-size 200] [--json]
//! ```
//!
//! Writes go to the leader, found with `Maintenance/Status` on every endpoint (the member whose
//! id is the leader id it reports), as ringzero's client follows leader hints to its leader:
//! etcd's own `benchmark put` instead sends to the endpoints given and lets followers forward.
//! The CPU of the process listening on each endpoint is reported, as for ringzero's nodes.
//! Plain gRPC (h2c): the messages are written out by hand below, no protoc needed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::ExitCode;
use std::time::Duration;

use ringzero_telemetry::load::{CpuProbe, Report, Shape, closed_loop};
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
    #[prost(int64, tag = "3")]
    lease: i64,
    #[prost(bool, tag = "4")]
    prev_kv: bool,
    #[prost(bool, tag = "5")]
    ignore_value: bool,
    #[prost(bool, tag = "6")]
    ignore_lease: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    cluster_id: u64,
    #[prost(uint64, tag = "2")]
    member_id: u64,
    #[prost(int64, tag = "3")]
    revision: i64,
    #[prost(uint64, tag = "4")]
    raft_term: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {
    #[prost(message, optional, tag = "1")]
    header: Option<ResponseHeader>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StatusRequest {}

#[derive(Clone, PartialEq, prost::Message)]
struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    header: Option<ResponseHeader>,
    #[prost(string, tag = "2")]
    version: String,
    #[prost(int64, tag = "3")]
    db_size: i64,
    #[prost(uint64, tag = "4")]
    leader: u64,
}

const PUT: &str = "/etcdserverpb.KV/Put";
const STATUS: &str = "/etcdserverpb.Maintenance/Status";

#[derive(Debug)]
struct Opts {
    endpoints: Vec<String>,
    clients: usize,
    shape: Shape,
    value_size: usize,
    json: bool,
}

fn seconds(s: &str) -> Result<Duration, String> {
    let (n, scale) = match s.strip_suffix("ms") {
        Some(n) => (n, 1e-3),
        None => (s.strip_suffix('s').unwrap_or(s), 1.0),
    };
    let v: f64 = n.parse().map_err(|_| format!("not a duration: {s}"))?;
    Duration::try_from_secs_f64(v * scale).map_err(|_| format!("not a duration: {s}"))
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        endpoints: Vec::new(),
        clients: 1,
        shape: Shape {
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(10),
        },
        value_size: 200,
        json: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--endpoints" => o.endpoints = value()?.split(',').map(str::to_owned).collect(),
            "--clients" => o.clients = value()?.parse().map_err(|e| format!("--clients: {e}"))?,
            "--duration" => o.shape.duration = seconds(&value()?)?,
            "--warmup" => o.shape.warmup = seconds(&value()?)?,
            "--value-size" => {
                o.value_size = value()?.parse().map_err(|e| format!("--value-size: {e}"))?
            }
            "--json" => o.json = true,
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    if o.endpoints.is_empty() || o.clients == 0 || o.shape.duration.is_zero() {
        return Err("need --endpoints, --clients > 0 and --duration > 0".into());
    }
    Ok(o)
}

async fn connect(endpoint: &str) -> Result<Grpc<Channel>, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .map_err(|e| format!("{endpoint}: {e}"))?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| format!("{endpoint}: {e}"))?;
    Ok(Grpc::new(channel))
}

async fn unary<Req, Resp>(
    g: &mut Grpc<Channel>,
    path: &'static str,
    req: Req,
) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    g.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    g.unary(
        tonic::Request::new(req),
        PathAndQuery::from_static(path),
        codec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// The endpoint whose member is the leader.
async fn leader(endpoints: &[String]) -> Result<String, String> {
    let mut seen = Vec::new();
    for e in endpoints {
        let Ok(mut g) = connect(e).await else {
            seen.push(format!("{e}: unreachable"));
            continue;
        };
        match unary::<_, StatusResponse>(&mut g, STATUS, StatusRequest {}).await {
            Ok(s) if s.header.as_ref().is_some_and(|h| h.member_id == s.leader) => {
                return Ok(e.clone());
            }
            Ok(s) => seen.push(format!("{e}: follower (leader {:x})", s.leader)),
            Err(st) => seen.push(format!("{e}: {st}")),
        }
    }
    Err(format!(
        "no leader among the endpoints: {}",
        seen.join("; ")
    ))
}

async fn run(o: Opts) -> Result<Report, String> {
    let leader = leader(&o.endpoints).await?;
    let mut clients = Vec::with_capacity(o.clients);
    for _ in 0..o.clients {
        clients.push(connect(&leader).await?);
    }
    let probe = CpuProbe::new(&o.endpoints);
    let run_id = format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos()
    );
    let value = vec![b'x'; o.value_size];
    eprintln!(
        "etcd-put {run_id}: {} clients to the leader {leader}, {:?} warmup + {:?} measured, {}-byte values",
        o.clients, o.shape.warmup, o.shape.duration, o.value_size
    );
    let (summary, before, after) = closed_loop(
        clients,
        o.shape,
        move |mut g, client, i| {
            let req = PutRequest {
                key: format!("bench-{run_id}-{client}-{i}").into_bytes(),
                value: value.clone(),
                ..PutRequest::default()
            };
            async move {
                let r = unary::<_, PutResponse>(&mut g, PUT, req).await;
                (g, r.map(|_| ()).map_err(|s| format!("{:?}", s.code())))
            }
        },
        || probe.sample(),
    )
    .await;
    Ok(Report {
        target: "etcd".into(),
        clients: o.clients,
        shape: o.shape,
        cpu: probe.usage(&before, &after),
        summary,
        terms: None,
    })
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("etcd-put: {e}");
            return ExitCode::from(2);
        }
    };
    let json = o.json;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(o)) {
        Ok(r) if r.summary.calls > 0 => {
            if json {
                println!("{}", r.to_json());
            } else {
                print!("{}", r.render_text());
            }
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!("etcd-put: no write succeeded:\n{}", r.render_text());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("etcd-put: {e}");
            ExitCode::FAILURE
        }
    }
}
