//! # ringzero-sched
//!
//! The scheduler, a privileged process with its own SPIFFE identity and a capability attenuated
//! to what placement needs: it accepts jobs submitted with `sched:submit` on a namespace, places
//! them on enrolled nodes, writes each job's registration entry parented to the chosen node, and
//! asks that node's agent to launch it with a capability narrowed to that node, that job and a
//! short lifetime.
//!
//! This crate holds the placement logic: [`plan`] is a pure, deterministic function from the
//! jobs, nodes and allocations the authority stores to the changes that reconcile them. It does
//! no I/O and does not log; the [`daemon`] (`ringzero sched run`) converts the authority's
//! messages to the views below, writes the [`Plan`] back, and logs it.
//!
//! # Rules
//!
//! - A running job wants one allocation per index `0..count` at its current version. An
//!   allocation **holds** an index when it is desired `Run`, `Pending` or `Running`, at the
//!   job's current version, on a node that is live and eligible. When several do, one is kept
//!   (not draining, then `Running`, then lowest id) and the others are stopped.
//! - **Lost**: a non-terminal allocation on a node that is not live, not eligible or unknown is
//!   marked lost, and its index is placed elsewhere.
//! - **Draining**: an allocation holding an index on a draining node keeps running until a
//!   replacement is placed elsewhere; the same plan then stops it. If no replacement fits, it
//!   keeps running and the index is reported blocked.
//! - **Stop**: an allocation desired `Run` of an old version, of an index `>= count` (scale
//!   down stops the highest indexes), or of a job that is stopped or absent is stopped. An old
//!   version's index is placed anew in the same plan.
//! - **Terminal states**: `Exited` at the current version means the index is done (a batch
//!   task ended) and it is not replaced, whatever became of its node. `Failed` at the current version is not replaced
//!   automatically: the index is reported blocked, "failed on node X". `Lost` and `Stopped`
//!   hold nothing; the index is placed again if still wanted. Terminal allocations are never
//!   stopped or marked lost again.
//! - **Feasible nodes**: live, eligible, not draining, allowed by name (an empty list allows
//!   all), carrying all the job's labels, and with free capacity at least the request in both
//!   cpu and memory. Free = capacity − requests of the allocations that hold an index after
//!   this plan, including those placed earlier in it. Allocations being stopped or already
//!   asked to stop count nothing, so a replacement may briefly overlap its predecessor. A job
//!   with no request takes no capacity.
//! - **Spread**: among feasible nodes, the one with the fewest allocations of the same job,
//!   then the lowest utilization after placing (max of cpu and memory fraction), then the
//!   smallest name.
//! - **Blocked**: an index that cannot be placed is reported with the first constraint no node
//!   passes, e.g. "no node satisfies labels zone=a" or "insufficient memory: needs 512 MB, most
//!   free 256 MB".
//! - **Deterministic**: jobs are placed in (namespace, name, index) order; `stop` and `lost`
//!   are sorted; input order does not matter when names and ids are distinct (otherwise the
//!   first node or job of a name wins). Ids come from the caller's generator.
//! - **Idempotent**: applying a plan (new allocations `Pending`, stops desired `Stop`, losses
//!   `Lost`) and planning again gives a plan with nothing to write.
//! - **Bounded**: allocations are indexed by job, index and node once, O(allocs); a job that
//!   needs placements costs O(nodes) once plus O(feasible nodes) per placement. At most
//!   [`PlanLimits::max_place`] placements per plan; the rest are counted in
//!   [`Plan::deferred`] for the next plan; at most [`PlanLimits::max_blocked`] blocked
//!   indexes are listed, the rest counted in [`Plan::unreported`].
//!
//! # Layout
//!
//! - `view`: the input views — [`NodeView`], [`JobView`], [`AllocView`] with [`Desired`] and
//!   [`AllocState`].
//! - `ledger`: indexes the input once and decides losses, stops and which allocation holds
//!   each index; tracks capacity used per node.
//! - `place`: feasible nodes for a job, the spread choice, and the reason when none fits.
//! - `plan`: [`plan`], [`Plan`], [`PlanLimits`], [`NewAlloc`], [`Blocked`].
//! - [`daemon`]: the `ringzero sched run` loop — reads the authority, converts to views,
//!   plans, writes the plan in batches while holding the scheduler lease. The only module
//!   that does I/O or logs; [`plan`] stays pure.
//!
//! # Example
//!
//! ```
//! use ringzero_sched::{plan, JobView, NodeView, PlanLimits};
//!
//! let node = |name: &str| NodeView {
//!     name: name.into(),
//!     cpu_millis: 2_000,
//!     memory_mb: 4_096,
//!     live: true,
//!     eligible: true,
//!     ..NodeView::default()
//! };
//! let job = JobView {
//!     namespace: "web".into(),
//!     name: "api".into(),
//!     version: 1,
//!     count: 2,
//!     cpu_millis: 500,
//!     memory_mb: 512,
//!     running: true,
//!     ..JobView::default()
//! };
//! let mut next = 0;
//! let mut ids = || {
//!     next += 1;
//!     format!("alloc-{next}")
//! };
//! let plan = plan(&[job], &[node("a"), node("b")], &[], &PlanLimits::default(), &mut ids);
//! let nodes: Vec<&str> = plan.place.iter().map(|p| p.node.as_str()).collect();
//! assert_eq!(nodes, ["a", "b"]); // spread: one per node
//! assert!(plan.stop.is_empty() && plan.lost.is_empty() && plan.blocked.is_empty());
//! ```
#![forbid(unsafe_code)]

pub mod daemon;
mod ledger;
mod place;
mod plan;
mod view;

pub use self::plan::{
    Blocked, DEFAULT_MAX_BLOCKED, DEFAULT_MAX_PLACE, NewAlloc, Plan, PlanLimits, plan,
};
pub use self::view::{AllocState, AllocView, Desired, JobView, NodeView};
