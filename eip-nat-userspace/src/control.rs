//! The control protocol between the CLI and the agent: one JSON object per
//! line over a Unix socket that only root can open.

use std::{
    io::{BufRead, BufReader, Write},
    net::Ipv4Addr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::associations::Association;

pub const DEFAULT_SOCKET: &str = "/run/eip-nat/eip-nat.sock";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Associate { eip: Ipv4Addr, private_ip: Ipv4Addr },
    Disassociate { eip: Ipv4Addr },
    List,
    Stats,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Associated(Association),
    Disassociated(Association),
    List(Vec<Association>),
    Stats(Stats),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Reply),
    /// The request broke a rule or was malformed; nothing changed.
    Refused(String),
    /// The agent failed to carry out a valid request; nothing changed.
    Failed(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Every (direction, verdict) counter, zero or not, so a scraper sees a
    /// stable set of series.
    pub verdicts: Vec<VerdictStat>,
    pub eips: Vec<EipStat>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictStat {
    pub direction: String,
    pub verdict: String,
    pub code: u32,
    pub drop: bool,
    pub packets: u64,
    /// Whole frames, link-layer header included.
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EipStat {
    pub eip: Ipv4Addr,
    pub private_ip: Ipv4Addr,
    pub in_packets: u64,
    /// IPv4 bytes (header total length), as billed.
    pub in_bytes: u64,
    pub out_packets: u64,
    pub out_bytes: u64,
}

impl Stats {
    pub fn verdict(&self, direction: &str, verdict: &str) -> Option<&VerdictStat> {
        self.verdicts
            .iter()
            .find(|v| v.direction == direction && v.verdict == verdict)
    }

    /// Packets translated in `direction`, by either path.
    pub fn translated(&self, direction: &str) -> u64 {
        self.verdicts
            .iter()
            .filter(|v| v.direction == direction && v.verdict.starts_with("translated"))
            .map(|v| v.packets)
            .sum()
    }

    pub fn eip(&self, eip: Ipv4Addr) -> Option<&EipStat> {
        self.eips.iter().find(|e| e.eip == eip)
    }
}

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot reach the agent at {path} (is `eip-nat agent` running, and are you root?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the agent")]
    Io(#[from] std::io::Error),
    #[error("the agent's answer is not understood")]
    Protocol(#[from] serde_json::Error),
    #[error("the agent closed the connection without answering")]
    NoAnswer,
}

/// Sends one request and waits for its response.
pub fn call(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    if answer.is_empty() {
        return Err(ClientError::NoAnswer);
    }
    Ok(serde_json::from_str(&answer)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_plain_json() {
        let r = Request::Associate {
            eip: "203.0.113.5".parse().unwrap(),
            private_ip: "10.0.0.5".parse().unwrap(),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"op":"associate","eip":"203.0.113.5","private_ip":"10.0.0.5"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        assert!(serde_json::from_str::<Request>(r#"{"op":"associate","eip":"1.2.3"}"#).is_err());
    }
}
