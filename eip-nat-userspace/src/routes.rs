//! Host routes to where each ENI lives, in the gateway's main routing table
//! over rtnetlink (rtnetlink(7)). They are what makes traffic follow an ENI:
//! the fast path's `bpf_fib_lookup` and the kernel's own forwarding both
//! read this table, so once a replace is acknowledged no packet for the
//! address is routed to the old place.
//!
//! The agent's routes carry their own protocol number, [`RTPROT_EIP_NAT`],
//! so it can list and remove exactly its own (`ip route show proto 234`).

use std::{
    collections::BTreeMap,
    ffi::CString,
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use thiserror::Error;

use crate::model::Location;

/// Route protocol of the agent's routes (include/uapi/linux/rtnetlink.h
/// leaves values above RTPROT_STATIC to routing daemons; 234 is unused).
pub const RTPROT_EIP_NAT: u8 = 234;

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const RT_TABLE_MAIN: u8 = 254;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
/// On delete: any scope (fib_table_delete() matches a route's scope only
/// when one other than RT_SCOPE_NOWHERE is given).
const RT_SCOPE_NOWHERE: u8 = 255;
const RTN_UNICAST: u8 = 1;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const NLMSG_HDRLEN: usize = 16;
const RTMSG_LEN: usize = 12;

#[derive(Debug, Error)]
pub enum RouteError {
    #[error("interface {0} does not exist on this gateway")]
    NoSuchInterface(String),
    #[error("rtnetlink: {op} {addr}")]
    Kernel {
        op: &'static str,
        addr: Ipv4Addr,
        #[source]
        source: io::Error,
    },
    #[error("rtnetlink socket")]
    Socket(#[source] io::Error),
}

pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the call's duration.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

fn ifname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has room for IF_NAMESIZE bytes, as the call requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// A NETLINK_ROUTE socket in the caller's network namespace.
pub struct Routes {
    fd: OwnedFd,
    seq: u32,
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// Walks the `(type, payload)` netlink attributes in `buf`.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]);
        if len < 4 || len > buf.len() {
            return None;
        }
        let data = &buf[4..len];
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some((kind, data))
    })
}

impl Routes {
    pub fn open() -> Result<Self, RouteError> {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(RouteError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The kernel answers at once; a missing answer must fail the
        // request, never hang the agent.
        let timeout = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: `timeout` is valid for reads of its size, as passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(RouteError::Socket(io::Error::last_os_error()));
        }
        Ok(Self { fd, seq: 0 })
    }

    /// A request: header, rtmsg for `addr/32` in the main table, attributes.
    fn message(&mut self, kind: u16, flags: u16, addr: Ipv4Addr, scope: u8) -> Vec<u8> {
        self.seq = self.seq.wrapping_add(1);
        let mut m = vec![0u8; NLMSG_HDRLEN];
        m[4..6].copy_from_slice(&kind.to_ne_bytes());
        m[6..8].copy_from_slice(&flags.to_ne_bytes());
        m[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol,
        // scope, type, flags.
        m.extend_from_slice(&[
            libc::AF_INET as u8,
            32,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_EIP_NAT,
            scope,
            RTN_UNICAST,
        ]);
        m.extend_from_slice(&0u32.to_ne_bytes());
        push_attr(&mut m, RTA_DST, &addr.octets());
        m
    }

    fn send(&self, mut m: Vec<u8>) -> io::Result<()> {
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        // SAFETY: `m` is valid for `m.len()` bytes; the kernel is the peer
        // by default (nl_pid 0).
        let n = unsafe { libc::send(self.fd.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads replies to the last request, calling `each` on every message
    /// of type RTM_NEWROUTE, until the ack or the end of a dump.
    fn receive(&self, mut each: impl FnMut(&[u8])) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
                let kind = u16::from_ne_bytes([rest[4], rest[5]]);
                let seq = u32::from_ne_bytes(rest[8..12].try_into().unwrap());
                if len < NLMSG_HDRLEN || len > rest.len() {
                    return Err(io::Error::other("truncated netlink message"));
                }
                let body = &rest[NLMSG_HDRLEN..len];
                rest = &rest[len.next_multiple_of(4).min(rest.len())..];
                if seq != self.seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let errno = i32::from_ne_bytes(body[0..4].try_into().unwrap());
                        return match errno {
                            0 => Ok(()),
                            e => Err(io::Error::from_raw_os_error(-e)),
                        };
                    }
                    RTM_NEWROUTE => each(body),
                    _ => {}
                }
            }
        }
    }

    /// Points `addr/32` at `location`, replacing any route of ours.
    pub fn replace(&mut self, addr: Ipv4Addr, location: &Location) -> Result<(), RouteError> {
        let oif = match &location.dev {
            Some(dev) => {
                Some(ifindex(dev).ok_or_else(|| RouteError::NoSuchInterface(dev.clone()))?)
            }
            None => None,
        };
        // With no next hop the address is on the link itself.
        let scope = match location.via {
            Some(_) => RT_SCOPE_UNIVERSE,
            None => RT_SCOPE_LINK,
        };
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        let mut m = self.message(RTM_NEWROUTE, flags, addr, scope);
        if let Some(via) = location.via {
            push_attr(&mut m, RTA_GATEWAY, &via.octets());
        }
        if let Some(oif) = oif {
            push_attr(&mut m, RTA_OIF, &oif.to_ne_bytes());
        }
        self.send(m)
            .and_then(|()| self.receive(|_| {}))
            .map_err(|source| RouteError::Kernel {
                op: "replacing the route to",
                addr,
                source,
            })
    }

    /// Removes our route to `addr/32`; one that is not there is no error.
    pub fn delete(&mut self, addr: Ipv4Addr) -> Result<(), RouteError> {
        let m = self.message(
            RTM_DELROUTE,
            NLM_F_REQUEST | NLM_F_ACK,
            addr,
            RT_SCOPE_NOWHERE,
        );
        match self.send(m).and_then(|()| self.receive(|_| {})) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            r => r.map_err(|source| RouteError::Kernel {
                op: "deleting the route to",
                addr,
                source,
            }),
        }
    }

    /// Checks that `location` can carry a route, as the kernel will when the
    /// route is installed (fib_check_nh(): a next hop must be on a directly
    /// connected network), so that an event naming an unusable location is
    /// refused before anything is recorded. Returns why not.
    pub fn check(&mut self, location: &Location) -> Result<(), String> {
        let oif = match &location.dev {
            Some(dev) => {
                Some(ifindex(dev).ok_or_else(|| format!("interface {dev} does not exist"))?)
            }
            None => None,
        };
        let Some(via) = location.via else {
            return Ok(());
        };
        // RTM_GETROUTE for the next hop: how the gateway itself reaches it.
        // NLM_F_ACK: the answer is followed by an ack, which ends receive().
        // No RTA_OIF: with one, the kernel assumes an unrouted destination
        // is on that link (__ip_route_output_key_hash), which the route
        // itself will not accept; compare the interface afterwards.
        let flags = NLM_F_REQUEST | NLM_F_ACK;
        let mut m = self.message(RTM_GETROUTE, flags, via, RT_SCOPE_UNIVERSE);
        m[NLMSG_HDRLEN + 4] = 0; // any table
        m[NLMSG_HDRLEN + 5] = 0; // any protocol
        let mut answer = None;
        let sent = self.send(m).and_then(|()| {
            self.receive(|body| {
                if body.len() >= RTMSG_LEN {
                    let mut gateway = false;
                    let mut out = None;
                    for (kind, data) in attrs(&body[RTMSG_LEN..]) {
                        match (kind, data.len()) {
                            (RTA_GATEWAY, _) => gateway = true,
                            (RTA_OIF, 4) => {
                                out = Some(u32::from_ne_bytes(data.try_into().unwrap()))
                            }
                            _ => {}
                        }
                    }
                    answer = Some((body[7], gateway, out));
                }
            })
        });
        match (sent, answer) {
            (Err(e), _) => Err(format!("the gateway has no route to next hop {via} ({e})")),
            (Ok(()), Some((RTN_UNICAST, false, out))) => match (oif, &location.dev) {
                (Some(want), Some(dev)) if out != Some(want) => {
                    Err(format!("next hop {via} is not reached through {dev}"))
                }
                _ => Ok(()),
            },
            (Ok(()), Some((RTN_UNICAST, true, _))) => Err(format!(
                "next hop {via} is not on a network the gateway is directly connected to"
            )),
            (Ok(()), _) => Err(format!(
                "next hop {via} is not a unicast address reachable from the gateway"
            )),
        }
    }

    /// Every route of ours in the main table.
    pub fn list(&mut self) -> Result<BTreeMap<Ipv4Addr, Location>, RouteError> {
        self.seq = self.seq.wrapping_add(1);
        let mut m = vec![0u8; NLMSG_HDRLEN];
        m[4..6].copy_from_slice(&RTM_GETROUTE.to_ne_bytes());
        m[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        m[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        m.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let mut out = BTreeMap::new();
        let parse = |body: &[u8]| {
            if body.len() < RTMSG_LEN || body[1] != 32 || body[5] != RTPROT_EIP_NAT {
                return;
            }
            let mut table = body[4] as u32;
            let (mut dst, mut location) = (None, Location::default());
            for (kind, data) in attrs(&body[RTMSG_LEN..]) {
                match (kind, data.len()) {
                    (RTA_DST, 4) => dst = Some(Ipv4Addr::new(data[0], data[1], data[2], data[3])),
                    (RTA_GATEWAY, 4) => {
                        location.via = Some(Ipv4Addr::new(data[0], data[1], data[2], data[3]))
                    }
                    (RTA_OIF, 4) => {
                        location.dev = ifname(u32::from_ne_bytes(data.try_into().unwrap()))
                    }
                    (RTA_TABLE, 4) => table = u32::from_ne_bytes(data.try_into().unwrap()),
                    _ => {}
                }
            }
            if let (Some(dst), RT_TABLE_MAIN_U32) = (dst, table) {
                out.insert(dst, location);
            }
        };
        const RT_TABLE_MAIN_U32: u32 = RT_TABLE_MAIN as u32;
        self.send(m)
            .and_then(|()| self.receive(parse))
            .map_err(|source| RouteError::Kernel {
                op: "listing routes, at",
                addr: Ipv4Addr::UNSPECIFIED,
                source,
            })?;
        Ok(out)
    }
}
