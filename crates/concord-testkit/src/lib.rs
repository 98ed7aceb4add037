//! `concord-testkit` holds what Concord's tests share: generators of documents and valid
//! operations ([`generate`]), a seeded PRNG ([`SimRng`]), and a simulation of one server and
//! many clients over an in-memory network on simulated time ([`sim`]).
//!
//! With the `wire` feature it also has [`wire::WireClient`], a protocol-level WebSocket
//! client for tests and tools that talk to a real server; with the `process` feature,
//! [`process::ServeProcess`], which runs `concord serve` as a child process that can be
//! killed and restarted.
//!
//! It is test code: nothing here is part of Concord's API. Only `wire` and `process` do
//! I/O.

pub mod generate;
#[cfg(feature = "process")]
pub mod process;
mod rng;
pub mod server_store;
pub mod sim;
#[cfg(feature = "wire")]
pub mod wire;

pub use rng::SimRng;
