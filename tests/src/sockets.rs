//! Sockets in test namespaces, bounded in time so a lost packet fails a
//! test instead of hanging it.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use crate::netns::in_netns;

pub const TIMEOUT: Duration = Duration::from_secs(3);

pub fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

pub fn udp_socket(ns: &str, addr: SocketAddrV4) -> UdpSocket {
    let s = in_netns(ns, || UdpSocket::bind(addr).expect("bind udp"));
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// `accept` bounded in time, so a failed connect fails the test instead of
/// hanging it.
pub fn accept_within(listener: &TcpListener, limit: Duration) -> (TcpStream, SocketAddr) {
    listener.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((conn, peer)) => {
                conn.set_nonblocking(false).unwrap();
                return (conn, peer);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no connection arrived"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Sends 64-byte UDP datagrams from `client` to `to` at about `per_sec`
/// (catching up after a late wake-up) until `stop`; counts them in `sent`.
pub fn send_at_rate(
    client: &UdpSocket,
    to: SocketAddrV4,
    per_sec: u64,
    stop: &AtomicBool,
    sent: &AtomicU64,
) {
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        client.send_to(&[7u8; 64], to).unwrap();
        let n = sent.fetch_add(1, Ordering::Relaxed) + 1;
        let due = started + Duration::from_micros(n * 1_000_000 / per_sec);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}
