//! Sockets in test namespaces, bounded in time so a lost packet fails a
//! test instead of hanging it.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    time::Duration,
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
