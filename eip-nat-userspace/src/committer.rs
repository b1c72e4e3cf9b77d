//! Makes the writer's groups durable on a thread of its own, so that one
//! group's fsync overlaps the next group's checks and datapath writes
//! (a pipeline of two stages) instead of holding them up. Groups queue in
//! order; the committer takes every group waiting (up to [`MAX_JOBS`]) as
//! one transaction, one fsync, then calls each group's `done` in order:
//! a writer is answered only once its change is durable.
//!
//! If a transaction fails, the groups after it were checked against a
//! state that included the failed ones: every group of the same epoch
//! still queued fails too, and the writer, told through `done`, puts
//! memory and the datapath back to what the store holds and starts a new
//! epoch (`Gateway::recover`).

use std::{
    sync::{mpsc, Arc},
    thread::JoinHandle,
};

use crate::store::{Changes, StoreError, Tables};

/// The most groups one transaction takes.
pub const MAX_JOBS: usize = 1024;

/// Called once a group is durable, or with why it is not.
pub type Done = Box<dyn FnOnce(Result<(), Arc<StoreError>>) + Send>;

struct Job {
    epoch: u64,
    /// None: only a place in the order (a group with nothing to write).
    changes: Option<Changes>,
    done: Done,
}

pub struct Committer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    pub fn start(tables: Tables) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("eip-nat-commit".into())
            .spawn(move || serve(&tables, &rx))?;
        Ok(Self {
            jobs: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues `changes` (made in `epoch`); `done` is called once they are
    /// durable, or have failed.
    pub fn submit(&self, epoch: u64, changes: Option<Changes>, done: Done) {
        let job = Job {
            epoch,
            changes,
            done,
        };
        if let Err(mpsc::SendError(job)) = self.jobs.as_ref().expect("running").send(job) {
            (job.done)(Err(Arc::new(StoreError::Stopped)));
        }
    }

    /// Waits until every group queued so far is durable or has failed.
    pub fn wait(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(
            u64::MAX,
            None,
            Box::new(move |_| {
                let _ = tx.send(());
            }),
        );
        let _ = rx.recv();
    }
}

impl Drop for Committer {
    /// Commits what is queued, then stops.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(tables: &Tables, jobs: &mpsc::Receiver<Job>) {
    // The epoch of the last failed transaction: its later groups fail.
    let mut failed: Option<(u64, Arc<StoreError>)> = None;
    let mut taken = Vec::new();
    while let Ok(first) = jobs.recv() {
        taken.push(first);
        while taken.len() < MAX_JOBS {
            match jobs.try_recv() {
                Ok(job) => taken.push(job),
                Err(_) => break,
            }
        }
        let (stale, fresh): (Vec<Job>, Vec<Job>) = taken
            .drain(..)
            .partition(|j| failed.as_ref().is_some_and(|(epoch, _)| j.epoch <= *epoch));
        if let Some((_, cause)) = &failed {
            for job in stale {
                (job.done)(Err(Arc::new(StoreError::AfterFailure(Arc::clone(cause)))));
            }
        }
        let mut changes = Vec::new();
        let mut dones = Vec::new();
        for job in fresh {
            changes.extend(job.changes);
            dones.push((job.epoch, job.done));
        }
        let t0 = std::time::Instant::now();
        let outcome = if changes.is_empty() {
            Ok(())
        } else {
            tables.write(&changes, true).map_err(Arc::new)
        };
        log::debug!("committed {} groups in {:?}", dones.len(), t0.elapsed());
        if let Err(e) = &outcome {
            let epoch = dones
                .iter()
                .map(|(epoch, _)| *epoch)
                .filter(|e| *e != u64::MAX)
                .max()
                .unwrap_or(0);
            log::error!(
                "recording {} changes failed: {}",
                changes.len(),
                crate::gateway::chain(e)
            );
            failed = Some((epoch, Arc::clone(e)));
        }
        for (_, done) in dones {
            done(outcome.clone());
        }
    }
}
