//! `concord-testkit` holds what Concord's tests share: generators of documents and valid
//! operations ([`generate`]), a seeded PRNG ([`SimRng`]), and a simulation of one server and
//! many clients over an in-memory network on simulated time ([`sim`]), and one of several
//! server nodes sequencing models over a shared store with leases ([`lease_sim`]).
//!
//! With the `wire` feature it also has [`wire::WireClient`], a protocol-level WebSocket
//! client for tests and tools that talk to a real server; with the `process` feature,
//! [`process::ServeProcess`], which runs `concord serve` as a child process that can be
//! killed and restarted, and [`postgres::ThrowawayPostgres`], a PostgreSQL cluster of its
//! own for tools that run several nodes.
//!
//! It is test code: nothing here is part of Concord's API. Only `wire` and `process` do
//! I/O.

pub mod generate;
pub mod lease_sim;
#[cfg(feature = "process")]
pub mod postgres;
#[cfg(feature = "process")]
pub mod process;
mod rng;
pub mod server_store;
pub mod sim;

/// The simulation's server without the simulation: the real session and model hosts, a
/// queue of jobs on their way to durability and a [`server_store::MemoryServerStore`] as its
/// disk, for drivers that bring their own clients (the stateful fuzz target).
pub mod host_driver {
    pub use crate::sim::server::{Sent, SimServer as HostDriver};
}
#[cfg(feature = "wire")]
pub mod wire;

pub use rng::SimRng;
