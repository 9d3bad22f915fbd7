//! Processors: pure steps from an event to an outcome, and the runner that owns all I/O:
//! batches from the bus, decode, the steps, dead letters, the store write, and the
//! acknowledgement (offset commit) only after the store has made the batch durable.

pub mod inbound;
mod runner;
mod steps;

pub use inbound::InboundRunner;
pub use runner::{Runner, RunnerConfig, RunnerError};
pub use steps::{decode, Outcome, Processor, Validate};
