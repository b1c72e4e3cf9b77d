//! The one thread that changes the gateway. Requests queue in a channel;
//! the writer takes every write waiting (up to [`MAX_GROUP`]) as one group:
//! one store transaction and one fsync for all of them (group commit),
//! each accepted or refused on its own, and every sender answered only
//! once its write is durable and in the datapath. The commit runs on the
//! committer's thread (`committer.rs`) while this one takes the next
//! group. Kernel notifications and other calls are taken in their turn
//! between groups.

use std::{sync::mpsc, time::Duration};

use netlink_packet_route::RouteNetlinkMessage;
use tokio::sync::oneshot;

use crate::{
    api::Generation,
    desired::Write,
    gateway::{chain, Gateway, GatewayError},
};

/// The most writes one transaction takes: a bound on how long the first
/// of them waits for the last.
pub const MAX_GROUP: usize = 1024;

type Reply = oneshot::Sender<Result<Generation, GatewayError>>;

enum Request {
    Write(Write, Reply),
    Kernel(RouteNetlinkMessage),
    Call(Box<dyn FnOnce(&mut Gateway) + Send>),
}

/// Sends requests to the writer; cloned by every task that needs it.
#[derive(Clone)]
pub struct Writer(mpsc::Sender<Request>);

/// The writer's end, to hand to [`serve`].
pub struct Requests(mpsc::Receiver<Request>);

pub fn channel() -> (Writer, Requests) {
    let (tx, rx) = mpsc::channel();
    (Writer(tx), Requests(rx))
}

impl Writer {
    /// Applies `write`; answers once it is durable and in the datapath
    /// (or refused, or failed).
    pub async fn write(&self, write: Write) -> Result<Generation, GatewayError> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send(Request::Write(write, tx))
            .map_err(|_| GatewayError::Stopped)?;
        rx.await.map_err(|_| GatewayError::Stopped)?
    }

    /// Follows a change of the kernel's tables, in its turn.
    pub fn kernel_changed(&self, m: RouteNetlinkMessage) -> Result<(), GatewayError> {
        self.0
            .send(Request::Kernel(m))
            .map_err(|_| GatewayError::Stopped)
    }

    /// Runs `f` on the gateway, in its turn, and returns what it returns.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Gateway) -> R + Send + 'static,
    ) -> Result<R, GatewayError> {
        let (tx, rx) = oneshot::channel();
        let call = Box::new(move |gw: &mut Gateway| {
            let _ = tx.send(f(gw));
        });
        self.0
            .send(Request::Call(call))
            .map_err(|_| GatewayError::Stopped)?;
        rx.await.map_err(|_| GatewayError::Stopped)
    }
}

/// How long the writer waits for a request before it checks, idle, that
/// no commit has failed (`Gateway::recover`).
const IDLE: Duration = Duration::from_millis(100);

/// Serves requests until every [`Writer`] is dropped.
pub fn serve(mut gw: Gateway, requests: Requests) {
    let mut writes = Vec::new();
    let mut replies = Vec::new();
    loop {
        let first = match requests.0.recv_timeout(IDLE) {
            Ok(first) => first,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                gw.recover();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut next = Some(first);
        while let Some(request) = next {
            match request {
                Request::Write(w, reply) => {
                    writes.push(w);
                    replies.push(reply);
                    if writes.len() >= MAX_GROUP {
                        flush(&mut gw, &mut writes, &mut replies);
                    }
                }
                Request::Kernel(m) => {
                    flush(&mut gw, &mut writes, &mut replies);
                    if let Err(e) = gw.kernel_changed(&m) {
                        log::warn!("following a kernel change: {}", chain(&e));
                    }
                }
                Request::Call(f) => {
                    flush(&mut gw, &mut writes, &mut replies);
                    f(&mut gw);
                }
            }
            next = requests.0.try_recv().ok();
        }
        flush(&mut gw, &mut writes, &mut replies);
    }
}

fn flush(gw: &mut Gateway, writes: &mut Vec<Write>, replies: &mut Vec<Reply>) {
    if writes.is_empty() {
        return;
    }
    let replies = std::mem::take(replies);
    gw.submit(
        writes,
        Box::new(move |outcomes| {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // The client may have gone; its write stands.
                let _ = reply.send(outcome);
            }
        }),
    );
    writes.clear();
}
