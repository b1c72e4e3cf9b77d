//! Shared machinery of eip-nat's root tests: packets built independently of
//! the datapath (own checksum code), network-namespace topologies that always
//! clean up, packet capture, and a handle on a running agent.
//!
//! These tests need root: they load BPF programs and create namespaces. They
//! are run by `cargo xtask test`, never skipped.

pub mod agent;
pub mod capture;
pub mod ecmp;
pub mod etcd;
pub mod l2;
pub mod model;
pub mod netns;
pub mod packet;
pub mod rig;
pub mod sockets;

/// Fails loudly, rather than skipping, when not run as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "these tests load BPF programs and create network namespaces: run them as root (cargo xtask test)");
}

/// `setsockopt(2)` with a typed value, failing with the OS error.
pub fn setsockopt<T>(
    fd: &impl std::os::fd::AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    // SAFETY: `value` is valid for reads of size_of::<T>() bytes, the size
    // passed; the kernel copies it and keeps no reference.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Gives `private_ip` a primary ENI and associates `eip` with it in NAT
/// mode; returns the association's counter slot.
pub fn associate_nat(
    gw: &mut eip_nat::gateway::Gateway,
    eip: std::net::Ipv4Addr,
    private_ip: std::net::Ipv4Addr,
) -> Result<u32, eip_nat::gateway::GatewayError> {
    use eip_nat::model::{EniKind, Event, Mode};
    let eni = format!("eni-{private_ip}");
    if gw.state().eni(&eni).is_none() {
        gw.apply(&Event::CreateEni {
            eni: eni.clone(),
            kind: EniKind::Primary,
            primary_ip: private_ip,
            instance: Some(format!("i-{private_ip}")),
            location: Default::default(),
        })?;
    }
    gw.apply(&Event::Associate {
        eip,
        eni,
        private_ip: None,
        mode: Mode::Nat,
    })?;
    Ok(gw.state().association(eip).expect("just associated").slot)
}

/// A gateway whose desired state lives in memory and that leaves the
/// routing table alone: what the BPF_PROG_TEST_RUN harnesses drive.
pub fn in_memory_gateway(
    datapath: eip_nat::datapath::Datapath,
    limits: eip_nat::model::Limits,
) -> Result<eip_nat::gateway::Gateway, eip_nat::gateway::GatewayError> {
    let store = eip_nat::store::Store::in_memory()?;
    Ok(eip_nat::gateway::Gateway::open(store, datapath, None, limits)?.0)
}

/// `n` detached secondary ENIs with an EIP each (NAT), as events: a large
/// gateway's state, loaded in one batch.
pub fn detached_nat_pairs(n: u32) -> Vec<eip_nat::model::Event> {
    use eip_nat::model::{EniKind, Event, Location, Mode};
    use std::net::Ipv4Addr;
    (0..n)
        .flat_map(|k| {
            let eni = format!("eni-many-{k}");
            [
                Event::CreateEni {
                    eni: eni.clone(),
                    kind: EniKind::Secondary,
                    primary_ip: Ipv4Addr::from(0x0a40_0000 + k),
                    instance: None,
                    location: Location::default(),
                },
                Event::Associate {
                    eip: Ipv4Addr::from(0x0b00_0000 + k),
                    eni,
                    private_ip: None,
                    mode: Mode::Nat,
                },
            ]
        })
        .collect()
}
