//! # ringzero-sched
//!
//! The scheduler, a privileged process with its own SPIFFE identity and a capability attenuated
//! to what placement needs: it accepts jobs submitted with `sched:submit` on a namespace, places
//! them on enrolled nodes, writes each job's registration entry parented to the chosen node, and
//! asks that node's agent to launch it with a capability narrowed to that node, that job and a
//! short lifetime.
//!
//! Nothing is implemented here yet.
#![forbid(unsafe_code)]
