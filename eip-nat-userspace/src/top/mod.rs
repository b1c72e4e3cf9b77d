//! `eip-nat top`: a live view of the gateway over the agent's socket:
//! per-EIP packets and bits per second in and out, drops by verdict, the
//! generation lag. Each sample is one `GET /v1/top` (the EIPs with the
//! largest counters, read in batches by the agent); rates are the
//! difference of two successive samples over the time between their
//! readings ([`rates`]). Drawing a screen is a pure function of the two
//! samples and the view's state ([`render`]), so a screen can be drawn
//! into a buffer as well as a terminal ([`screen`]).

pub mod filter;
pub mod rates;
pub mod render;
pub mod screen;
pub mod view;
