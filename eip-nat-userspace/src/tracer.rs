//! The agent's side of `eip-nat trace`: one tracer at a time. Starting a
//! trace writes `TRACE_CONFIG` and sets `FLAG_TRACE` (through the writer,
//! which owns `CONFIG`); the datapath then copies matching packets into
//! the `TRACE_EVENTS` ring buffer, which one task here drains into the
//! tracer's stream. When the tracer goes (its client disconnected), the
//! flag is cleared: while nobody traces, the datapath tests one bit of a
//! value it has already read, and nothing more.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex,
};

use aya::maps::{MapData, RingBuf};
use eip_nat_common::maps::{TraceConfig, TraceEvent};
use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::mpsc,
};

use crate::{
    trace::{boot_offset_ns, TraceRecord},
    writer::Writer,
};

/// Records queued for a slow client before further ones are dropped (and
/// counted): the datapath never waits for a reader.
const QUEUE: usize = 4096;

#[derive(Default)]
struct Slot {
    /// The running trace's queue; None when nobody traces.
    tx: Option<mpsc::Sender<TraceRecord>>,
    /// Bumped at each start, so that a stale stop leaves a newer trace.
    session: u64,
}

/// What the ring buffer's reader shares with the tracer: not the writer,
/// so that the reader does not keep the writer alive at stop.
#[derive(Default)]
struct Queue {
    slot: Mutex<Slot>,
    /// Events the ring buffer delivered that no queue had room for.
    lost: AtomicU64,
}

pub struct Tracer {
    queue: Arc<Queue>,
    writer: Writer,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("another trace is running; one at a time")]
    Busy,
    #[error("the agent is stopping")]
    Stopped,
    #[error("setting up the trace in the datapath failed: {0}")]
    Datapath(String),
}

/// A running trace: its records, and (when dropped) the end of it.
pub struct Session {
    pub records: mpsc::Receiver<TraceRecord>,
    tracer: Arc<Tracer>,
    id: u64,
}

impl Drop for Session {
    fn drop(&mut self) {
        let tracer = Arc::clone(&self.tracer);
        let id = self.id;
        let ours = {
            let mut slot = tracer.queue.slot.lock().unwrap_or_else(|p| p.into_inner());
            let ours = slot.session == id && slot.tx.is_some();
            if ours {
                slot.tx = None;
            }
            ours
        };
        if ours {
            // Off in the datapath, in the writer's turn.
            let writer = tracer.writer.clone();
            tokio::spawn(async move {
                if let Ok(Err(e)) = writer.call(|gw| gw.set_trace(None)).await {
                    log::warn!("turning tracing off: {e}");
                }
                log::info!("trace ended");
            });
        }
    }
}

impl Tracer {
    /// Drains `ring` for as long as the agent runs.
    pub fn start(ring: RingBuf<MapData>, writer: Writer) -> std::io::Result<Arc<Self>> {
        let queue = Arc::new(Queue::default());
        // SAFETY: the ring buffer owns its descriptor and keeps it open,
        // unreplaced, for as long as the AsyncFd that owns the ring.
        let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }?;
        let shared = Arc::clone(&queue);
        let reader = tokio::spawn(async move {
            let offset = boot_offset_ns();
            loop {
                let Ok(mut guard) = ring.readable_mut().await else {
                    break;
                };
                let ring = guard.get_inner_mut();
                let tx = shared
                    .slot
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .tx
                    .clone();
                while let Some(item) = ring.next() {
                    let Some(event) = bytemuck::try_from_bytes::<TraceEvent>(&item).ok() else {
                        continue;
                    };
                    // Events left from a trace that has ended are dropped.
                    if let Some(tx) = &tx {
                        if tx.try_send(TraceRecord::from_event(event, offset)).is_err() {
                            shared.lost.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                guard.clear_ready();
            }
        });
        Ok(Arc::new(Self {
            queue,
            writer,
            reader,
        }))
    }

    /// Starts a trace of what `config` selects, unless one is running.
    pub async fn begin(self: &Arc<Self>, config: TraceConfig) -> Result<Session, TraceError> {
        let (tx, records) = mpsc::channel(QUEUE);
        let id = {
            let mut slot = self.queue.slot.lock().unwrap_or_else(|p| p.into_inner());
            if slot.tx.is_some() {
                return Err(TraceError::Busy);
            }
            slot.session += 1;
            slot.tx = Some(tx);
            slot.session
        };
        // From here on the session's drop undoes what follows.
        let session = Session {
            records,
            tracer: Arc::clone(self),
            id,
        };
        match self.writer.call(move |gw| gw.set_trace(Some(config))).await {
            Ok(Ok(())) => {
                log::info!("trace started");
                Ok(session)
            }
            Ok(Err(e)) => Err(TraceError::Datapath(e.to_string())),
            Err(_) => Err(TraceError::Stopped),
        }
    }

    /// Traced packets dropped because a reader was too slow.
    pub fn lost(&self) -> u64 {
        self.queue.lost.load(Ordering::Relaxed)
    }
}
