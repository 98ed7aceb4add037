//! `concord-testkit` holds what Concord's tests share: generators of documents and valid
//! operations ([`generate`]), a seeded PRNG ([`SimRng`]), and a simulation of one server and
//! many clients over an in-memory network on simulated time ([`sim`]).
//!
//! It is test code: nothing here is part of Concord's API, and nothing in it does I/O.

pub mod generate;
mod rng;
pub mod sim;

pub use rng::SimRng;
