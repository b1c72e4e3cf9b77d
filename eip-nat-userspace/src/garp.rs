//! Gratuitous ARP: a gateway that becomes the active one of its group
//! announces every EIP from its public interface, so the upstream router
//! (and the switches between) move the EIPs to its MAC at once instead of
//! when their entries for the old active time out.
//!
//! Each announcement is an ARP request whose sender and target addresses
//! are the EIP (an "ARP Announcement", RFC 5227 §3; RFC 5944 §4.6 allows
//! it as a request or a reply), broadcast. Linux, for one, takes such a
//! request into an existing neighbour entry even within its lock time
//! (it is "gratuitous"), so the upstream's entry changes with it.

use std::{io, net::Ipv4Addr, os::fd::AsRawFd, time::Duration};

use thiserror::Error;

/// Announcements sent back to back before a pause of [`PAUSE`]: at most
/// 50,000 a second, so that an upstream router that polices ARP to its CPU
/// drops as few as it can while 65,536 EIPs move in about 1.3 s.
pub const BATCH: usize = 500;
pub const PAUSE: Duration = Duration::from_millis(10);

/// EtherType of ARP, and RFC 826's constants for IPv4 over Ethernet.
const ETH_P_ARP: u16 = 0x0806;
const FRAME_LEN: usize = 42;

#[derive(Debug, Error)]
pub enum GarpError {
    #[error("opening a packet socket on interface {0}: {1}")]
    Socket(u32, #[source] io::Error),
    #[error("sending gratuitous ARP for {0}: {1}")]
    Send(Ipv4Addr, #[source] io::Error),
}

/// The announcement of `eip` from `mac`: an ARP request (RFC 826) with the
/// EIP as sender and target and no target MAC, to the broadcast address.
pub fn announcement(mac: [u8; 6], eip: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // Hardware Ethernet (1), protocol IPv4, lengths 6 and 4, request (1).
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&eip.octets());
    // Target MAC: zeroes (RFC 5227 §2.3).
    f[38..42].copy_from_slice(&eip.octets());
    f
}

/// A raw packet socket bound to one interface, for sending whole frames.
struct PacketSocket {
    fd: std::os::fd::OwnedFd,
    ifindex: u32,
}

impl PacketSocket {
    fn open(ifindex: u32) -> Result<Self, GarpError> {
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                // Sends only: receive nothing (protocol 0).
                0,
            )
        };
        if fd < 0 {
            return Err(GarpError::Socket(ifindex, io::Error::last_os_error()));
        }
        // SAFETY: a descriptor socket(2) just returned, owned from here on.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Ok(Self { fd, ifindex })
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: zeroes are a valid sockaddr_ll.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = ETH_P_ARP.to_be();
        to.sll_ifindex = self.ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        // SAFETY: `frame` and `to` are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Announces every EIP of `eips` from `mac` out of `ifindex`, paced
/// ([`BATCH`], [`PAUSE`]); blocking. A full send queue is waited out, not
/// counted as a failure. Returns how many were sent.
pub fn announce(ifindex: u32, mac: [u8; 6], eips: &[Ipv4Addr]) -> Result<usize, GarpError> {
    let socket = PacketSocket::open(ifindex)?;
    for (i, eip) in eips.iter().enumerate() {
        if i > 0 && i % BATCH == 0 {
            std::thread::sleep(PAUSE);
        }
        let frame = announcement(mac, *eip);
        loop {
            match socket.send(&frame) {
                Ok(()) => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => std::thread::sleep(PAUSE),
                Err(e) => return Err(GarpError::Send(*eip, e)),
            }
        }
    }
    Ok(eips.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_is_a_broadcast_request_for_the_eip_from_it() {
        let mac = [0x02, 0, 0, 0, 0, 7];
        let eip = Ipv4Addr::new(203, 0, 113, 10);
        let f = announcement(mac, eip);
        assert_eq!(&f[..6], &[0xff; 6], "broadcast");
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06], "ARP");
        assert_eq!(
            &f[14..22],
            &[0, 1, 8, 0, 6, 4, 0, 1],
            "Ethernet/IPv4 request"
        );
        assert_eq!(&f[22..28], &mac, "sender MAC");
        assert_eq!(&f[28..32], &eip.octets(), "sender IP");
        assert_eq!(&f[32..38], &[0; 6], "target MAC unknown");
        assert_eq!(&f[38..42], &eip.octets(), "target IP = sender IP");
    }
}
