//! Everything the kernel program and the agent must agree on: map names, the
//! layout of map keys and values, the verdict codes, and the pure packet
//! arithmetic (checksums, IPv4 header fields) that both sides can unit-test.
//!
//! This crate is `no_std` so the eBPF crate can use it; every map value is
//! `#[repr(C)]` with explicit padding and its size asserted at compile time.
#![no_std]

pub mod bytes;
pub mod csum;
pub mod ipv4;
pub mod maps;
pub mod verdict;

pub use maps::{AddrEntry, Config, Direction, EipCounters, VerdictCounter};
pub use verdict::Verdict;
