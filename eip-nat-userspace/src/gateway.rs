//! The agent's state: the rule-checked table and the datapath, changed
//! together or not at all.

use std::net::Ipv4Addr;

use thiserror::Error;

use crate::{
    associations::{Association, Associations, RuleError},
    control::{EipStat, Reply, Request, Response, Stats, VerdictStat},
    datapath::{Datapath, DatapathError},
};

#[derive(Debug, Error)]
pub enum GatewayError {
    #[error(transparent)]
    Refused(#[from] RuleError),
    #[error("the datapath refused the update; nothing changed")]
    Datapath(#[from] DatapathError),
}

pub struct Gateway {
    datapath: Datapath,
    table: Associations,
}

/// An error and its sources on one line, for the control protocol.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl Gateway {
    pub fn new(datapath: Datapath, capacity: u32) -> Self {
        Self {
            datapath,
            table: Associations::new(capacity),
        }
    }

    pub fn datapath_mut(&mut self) -> &mut Datapath {
        &mut self.datapath
    }

    pub fn associate(
        &mut self,
        eip: Ipv4Addr,
        private_ip: Ipv4Addr,
    ) -> Result<Association, GatewayError> {
        let a = self.table.check_associate(eip, private_ip)?;
        self.datapath.insert(&a)?;
        self.table.insert(a);
        log::info!("associated EIP {eip} with {private_ip}");
        Ok(a)
    }

    pub fn disassociate(&mut self, eip: Ipv4Addr) -> Result<Association, GatewayError> {
        let a = self.table.check_disassociate(eip)?;
        self.datapath.remove(&a)?;
        self.table.remove(eip);
        log::info!("disassociated EIP {eip} from {}", a.private_ip);
        Ok(a)
    }

    pub fn list(&self) -> Vec<Association> {
        self.table.iter().copied().collect()
    }

    pub fn stats(&self) -> Result<Stats, DatapathError> {
        let verdicts = self
            .datapath
            .verdict_counters()?
            .into_iter()
            .map(|(d, v, c)| VerdictStat {
                direction: d.name().into(),
                verdict: v.name().into(),
                code: v as u32,
                drop: v.is_drop(),
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect();
        let mut eips = Vec::with_capacity(self.table.len());
        for a in self.table.iter() {
            let c = self.datapath.eip_counters(a.slot)?;
            eips.push(EipStat {
                eip: a.eip,
                private_ip: a.private_ip,
                in_packets: c.in_packets,
                in_bytes: c.in_bytes,
                out_packets: c.out_packets,
                out_bytes: c.out_bytes,
            });
        }
        Ok(Stats { verdicts, eips })
    }

    pub fn handle(&mut self, request: Request) -> Response {
        let result = match request {
            Request::Associate { eip, private_ip } => {
                self.associate(eip, private_ip).map(Reply::Associated)
            }
            Request::Disassociate { eip } => self.disassociate(eip).map(Reply::Disassociated),
            Request::List => Ok(Reply::List(self.list())),
            Request::Stats => self.stats().map(Reply::Stats).map_err(Into::into),
        };
        match result {
            Ok(reply) => Response::Ok(reply),
            Err(GatewayError::Refused(e)) => {
                log::info!("refused: {e}");
                Response::Refused(e.to_string())
            }
            Err(e) => {
                log::error!("{}", chain(&e));
                Response::Failed(chain(&e))
            }
        }
    }
}
