//! Packet capture with an AF_PACKET socket inside a namespace: the bytes as
//! the receiving interface got them, so tests can check addresses and verify
//! checksums themselves.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use crate::netns::{ifindex, in_netns};

const ETH_P_ALL: u16 = 0x0003;
const PACKET_OUTGOING: u8 = 4;

pub struct Capture {
    fd: OwnedFd,
}

/// An AF_PACKET socket bound to `ifname` in `ns`, for every protocol.
fn packet_socket(ns: &str, ifname: &str) -> OwnedFd {
    let index = ifindex(ns, ifname);
    let fd = in_netns(ns, || {
        // SAFETY: plain socket(2) call; the fd is owned right after.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                (ETH_P_ALL.to_be()) as libc::c_int,
            )
        };
        assert!(
            raw >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `raw` is a fresh fd nobody else owns.
        unsafe { OwnedFd::from_raw_fd(raw) }
    });
    // SAFETY: zeroed sockaddr_ll is a valid starting value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ALL.to_be();
    sll.sll_ifindex = index as i32;
    // SAFETY: sll is a valid sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
    fd
}

/// Sends whole frames out of one interface, as they are.
pub struct RawSender {
    fd: OwnedFd,
}

impl RawSender {
    pub fn open(ns: &str, ifname: &str) -> Self {
        Self {
            fd: packet_socket(ns, ifname),
        }
    }

    pub fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        // SAFETY: `frame` is valid for reads of its length.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Capture {
    /// Starts capturing frames received on `ifname` in `ns`.
    pub fn start(ns: &str, ifname: &str) -> Self {
        let fd = packet_socket(ns, ifname);
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        crate::setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
            .expect("SO_RCVTIMEO on the capture socket");
        Self { fd }
    }

    /// Received frames (not ones this interface sent) until `quiet` passes
    /// with nothing new or `limit` is reached, bounded by `max` frames.
    pub fn collect(&self, quiet: Duration, limit: Duration, max: usize) -> Vec<Vec<u8>> {
        let start = Instant::now();
        let mut last = Instant::now();
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65536];
        while frames.len() < max && start.elapsed() < limit && last.elapsed() < quiet {
            // SAFETY: zeroed sockaddr_ll is valid; sizes match.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buf and from are valid for the sizes passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                    &mut from as *mut _ as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n < 0 {
                continue; // timeout tick
            }
            if from.sll_pkttype == PACKET_OUTGOING {
                continue;
            }
            frames.push(buf[..n as usize].to_vec());
            last = Instant::now();
        }
        frames
    }
}
