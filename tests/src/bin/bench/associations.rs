//! Many associations at once: through the agent's API in batches, as a
//! cloud control plane resyncing a gateway would, or the same pairs as the
//! minimal NAT's mappings.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use eip_nat::{
    api::Batch,
    client::Client,
    model::{EniKind, Event, Mode},
};

use crate::nth;

/// Associations per batch (each a primary ENI and an association).
pub const PER_BATCH: u32 = 25_000;

/// The throughput runs' filler: loaded beside the associations the traffic
/// uses, never hit by it. Both ranges are in 100.64.0.0/10, which nothing
/// in the rig sends to or from.
pub const FILL_EIPS: [u8; 4] = [100, 64, 0, 0];
pub const FILL_PRIVATES: [u8; 4] = [100, 96, 0, 0];

/// The `n` pairs (EIP base + k, private base + k).
pub fn pairs(
    eips: [u8; 4],
    privates: [u8; 4],
    n: u32,
) -> impl Iterator<Item = (Ipv4Addr, Ipv4Addr)> {
    (0..n).map(move |k| (nth(eips, k), nth(privates, k)))
}

/// Loads [`pairs`] into an agent in batches of [`PER_BATCH`], each a
/// primary ENI (`eni-<k>`, instance `i-<k>`) and a NAT association; the
/// names are unique per agent only if this runs once on it. [`SENDERS`]
/// clients send batches at once, as a control plane resyncing a gateway
/// would: one batch commits while the next is checked and applied.
pub fn bulk_load(
    client: impl Fn() -> Client + Sync,
    eips: [u8; 4],
    privates: [u8; 4],
    n: u32,
) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for sender in 0..SENDERS {
            let client = client();
            s.spawn(move || {
                let firsts = (0..n).step_by(PER_BATCH as usize);
                for first in firsts.skip(sender).step_by(SENDERS) {
                    let events = (first..n.min(first + PER_BATCH))
                        .flat_map(|k| {
                            let (eip, private_ip) = (nth(eips, k), nth(privates, k));
                            [
                                Event::CreateEni {
                                    eni: format!("eni-{k}"),
                                    kind: EniKind::Primary,
                                    primary_ip: private_ip,
                                    instance: Some(format!("i-{k}")),
                                    location: Default::default(),
                                },
                                Event::Associate {
                                    eip,
                                    eni: format!("eni-{k}"),
                                    private_ip: None,
                                    mode: Mode::Nat,
                                },
                            ]
                        })
                        .collect();
                    client
                        .batch(&Batch {
                            events,
                            if_generation: None,
                        })
                        .expect("batch");
                }
            });
        }
    });
    start.elapsed()
}

/// Clients sending batches at once in [`bulk_load`].
pub const SENDERS: usize = 2;
